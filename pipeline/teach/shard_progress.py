"""The teach job's progress: a bar on a terminal; written to a file, a pipe or a cluster's log,
one line per finished shard (command, shard, index) with the rate and the time left, and no
carriage returns."""

import sys
import time

from tqdm import tqdm


class ShardProgress:
    """Progress over ``total`` shards; ``enabled`` False: silent."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.views = total, 0, 0
        self.began = time.perf_counter()
        self.lines = enabled and not sys.stdout.isatty()
        self.bar = tqdm(total=total, desc="teach", unit="shard", disable=not enabled or self.lines)

    def shard_done(self, shard, views: int) -> None:
        """One shard finished with ``views`` views computed."""
        self.done += 1
        self.views += views
        elapsed = max(time.perf_counter() - self.began, 1e-9)
        rate = self.views / elapsed
        if not self.lines:
            self.bar.update()
            self.bar.set_postfix(views_per_s=f"{rate:.0f}")
            return
        left = elapsed / self.done * (self.total - self.done)
        print(
            f"teach: shard {self.done}/{self.total} {shard.file} (index {shard.id}): "
            f"{views} views, {rate:.1f} views/s, {elapsed:.0f}s elapsed, ETA {left:.0f}s",
            flush=True,
        )

    def close(self) -> None:
        self.bar.close()
