"""The teacher job works a shard in row blocks (all views of a block, then the next) so an
actor's memory does not grow with the shard: blocks change nothing in the cache."""

import numpy as np
import zarr

from tests.conftest import MIXED_PLAN, teach

ARRAYS = ["params"] + [
    f"teachers/regnet/{name}"
    for name in ("topk_logits", "topk_index", "logsumexp", "shard_done", "shard_checksum")
]


def test_row_blocks_give_the_cache_of_one_block_per_shard(tmp_path, data, teacher_path, ray_local):
    # a mixing plan: partners of a block's rows sit in other blocks
    whole, blocked = str(tmp_path / "whole.zarr"), str(tmp_path / "blocked.zarr")
    summary = teach(data, teacher_path, whole, plan=MIXED_PLAN, batch_size=32, block_rows=4096)
    teach(data, teacher_path, blocked, plan=MIXED_PLAN, batch_size=32, block_rows=40)
    one, other = zarr.open_group(whole, mode="r"), zarr.open_group(blocked, mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(one[name][:], other[name][:], err_msg=name)
    assert summary.peak_rss > 0 and "peak worker memory" in summary.lines()[2]
