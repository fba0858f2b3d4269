"""What a teacher pass did (:class:`TeachSummary`), filled in shard by shard."""

from dataclasses import dataclass, field


@dataclass
class TeachSummary:
    """What a teacher pass did."""

    cache: str
    shards_done: list[str] = field(default_factory=list)
    shards_skipped: list[str] = field(default_factory=list)
    shards_failed: dict[str, str] = field(default_factory=dict)
    views: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    cache_bytes: int = 0
    startup_seconds: float = 0.0
    workers: int = 0
    reused: bool = False
    peak_rss: int = 0  # the largest peak resident memory of a worker, bytes
    workers_lost: int = 0  # workers lost mid-run (their shards were redone on others)

    def lines(self) -> list[str]:
        if self.reused:
            return [f"teach: reused {self.cache} from the catalogue; nothing computed"]
        rate = self.views / self.seconds if self.seconds else 0.0
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.timings.items()))
        lines = [
            f"teach: {len(self.shards_done)} shards computed, {len(self.shards_skipped)} skipped "
            f"(already done), {len(self.shards_failed)} failed",
            f"teach: {self.views} views in {self.seconds:.1f}s ({rate:.0f} views/s; "
            f"{self.startup_seconds:.1f}s starting {self.workers} workers); "
            f"worker time: {parts or '-'}",
            f"teach: cache {self.cache} holds {self.cache_bytes / 2**20:.1f} MiB; "
            f"peak worker memory {self.peak_rss / 2**20:.0f} MiB",
        ]
        if self.workers_lost:
            lines.append(f"teach: {self.workers_lost} workers lost; their shards were redone")
        lines += [f"teach: FAILED {name}: {why}" for name, why in self.shards_failed.items()]
        return lines


def record(summary: TeachSummary, timings: dict, shard, result: dict) -> None:
    """One shard's result into the summary."""
    if "error" in result:
        summary.shards_failed[shard.file] = result["error"]
        return
    (summary.shards_skipped if result.get("skipped") else summary.shards_done).append(shard.file)
    summary.views += result["views"]
    summary.peak_rss = max(summary.peak_rss, result.get("peak_rss", 0))
    for key, value in result["timings"].items():
        timings[key] += value
