"""inspect's figures equal values computed straight from the arrays; verify catches one
altered value and names its row."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from kdcache.pipeline.cache import CacheStore, ShardTargets
from kdcache.tools.cache.inspect_cache import format_report, inspect_cache, plot_report
from kdcache.tools.cli.main import main
from kdcache.verify_cache import verify_cache
from kdcache.verify_replay import replay_check
from tests.conftest import PLAN, TOPK


def test_inspect_matches_the_arrays(tmp_path, data, cache):
    report = inspect_cache(cache, data.location)  # data and teacher lie outside its folder
    group = zarr.open_group(cache, mode="r")["teachers/regnet"]
    index = group["topk_index"][:450]
    logits = group["topk_logits"][:450].astype(np.float64)
    lse = group["logsumexp"][:450]
    labels = data.labels[:450]
    teacher = report["teachers"]["regnet"]
    assert (teacher["shards_done"], teacher["shards_total"], teacher["missing"]) == (5, 5, [])
    per_view = [(index[:, v, 0] == labels).mean() * 100 for v in range(PLAN.views)]
    assert teacher["accuracy_per_view"] == pytest.approx(per_view)
    assert teacher["accuracy"] == pytest.approx(np.mean(per_view))
    assert teacher["view_agreement"]["0-2"] == pytest.approx(
        (index[:, 0, 0] == index[:, 2, 0]).mean()
    )
    tail = 1 - np.exp(logits - lse[..., None]).sum(-1)
    assert teacher["tail_mass"]["p50"] == pytest.approx(np.median(tail))
    assert teacher["topk_mass"]["mean"] == pytest.approx(1 - tail.mean())
    disk = sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file())
    assert report["storage"]["bytes_on_disk"] == disk
    assert report["storage"]["bytes_per_view"] == pytest.approx(disk / (450 * PLAN.views))
    raw = 450 * PLAN.views * (TOPK * 2 + TOPK * 2 + 4 + 5 * 4)
    assert report["storage"]["compression_ratio"] == pytest.approx(raw / disk)
    assert "regnety_002" in format_report(report)
    plot_report(report, str(tmp_path / "inspect.png"))
    assert (tmp_path / "inspect.png").read_bytes()[:4] == b"\x89PNG"


def test_verify_passes_then_names_an_altered_row(tmp_path, data, cache, teacher_path, capsys):
    named = ["--data", data.location, "--teacher", f"regnet={teacher_path}"]
    moved = {"regnet": teacher_path}
    fresh = verify_cache(cache, data.location, samples=40, teachers=moved)
    assert fresh.ok, fresh.problems
    assert fresh.regions_checked == 5 * PLAN.views and fresh.views_recomputed == 40
    assert fresh.largest_logit_diff < 2e-2
    with pytest.raises(SystemExit) as exit_info:  # 28 x 28 images over a 700-pixel limit
        main(["verify", cache, "--samples", "2", "--max-pixels", "700", *named])
    assert exit_info.value.code == 2
    assert "784 pixels, above the limit of 700" in capsys.readouterr().err

    copy = str(tmp_path / "cache.zarr")
    shutil.copytree(cache, copy)
    group = zarr.open_group(copy, mode="r+")
    logits = group["teachers/regnet/topk_logits"]
    logits[237, 1, 0] = logits[237, 1, 0] + 1.5  # one stored value altered on disk
    altered = verify_cache(copy, data.location, samples=10, teachers=moved)
    assert not altered.ok
    assert "shards/train-000002.tar view 1 (teacher regnet): checksum mismatch" in altered.problems
    assert any("row 237 view 1" in p for p in altered.problems)
    assert not any("row 236" in p or "row 238" in p for p in altered.problems)
    with pytest.raises(SystemExit) as exit_info:
        main(["verify", copy, "--samples", "4", *named])
    assert exit_info.value.code == 1


def _synthetic_block(data, shard) -> ShardTargets:
    """Top-4 targets that vary from row to row (the same for every teacher)."""
    rng = np.random.default_rng(shard.id)
    n, views = shard.num_rows, PLAN.views
    index = np.argsort(rng.random((n, views, data.num_classes)), axis=-1)[..., :TOPK]
    logits = -np.sort(rng.random((n, views, TOPK)), axis=-1)
    return ShardTargets(
        params=PLAN.shard_params(data, shard),
        topk_logits=logits.astype(np.float16),
        topk_index=index.astype(np.int16),
        logsumexp=np.ones((n, views), dtype=np.float32),
    )


def test_teacher_agreement_is_over_the_rows_both_teachers_have(tmp_path, data):
    location = str(tmp_path / "cache.zarr")
    store = CacheStore.create(location, manifest=data, plan=PLAN, topk=TOPK, splits=["train"])
    identity = {"arch": "synthetic", "weights_sha256": "0" * 64, "source": "-", "num_classes": 10,
                "model_args": {}, "preprocessing": {"resolution": 28, "in_chans": 1, "mean": [0.5],
                "std": [0.5], "interpolation": "bilinear-antialias"}}  # fmt: skip
    shards = data.shards_of("train")
    # two identical teachers, done on overlapping shards; a third on a shard of its own
    for name, done in (("a", [0, 1, 2]), ("b", [1, 2, 3]), ("c", [4])):
        store.add_teacher({**identity, "name": name})
        for shard in (shards[i] for i in done):
            store.write_shard(name, shard, list(range(PLAN.views)), _synthetic_block(data, shard))
    agreement = inspect_cache(location, data.location)["teacher_agreement"]
    assert agreement == {"a|b": 1.0}


def test_replay_rebuilds_as_many_views_as_asked_on_done_shards_of_an_unfinished_cache(
    tmp_path, data, cache, teacher_path
):
    store = CacheStore.open(cache)
    complete = replay_check(store, data, samples=40)
    assert complete.views_compared == 40 and not complete.problems
    copy = str(tmp_path / "cache.zarr")
    shutil.copytree(cache, copy)
    group = zarr.open_group(copy, mode="r+")
    group["teachers/regnet/shard_done"][2] = 0  # shard 2 unfinished: its values unwritten
    group["params"][200:300] = np.nan
    report = verify_cache(copy, data.location, samples=30, replay=True,
                          teachers={"regnet": teacher_path})  # fmt: skip
    assert report.ok, report.problems
    assert report.replay.views_compared == 30 and report.views_recomputed == 30
