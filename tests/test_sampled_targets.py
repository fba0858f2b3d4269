"""Sampled targets in the cache: arrays and attrs, drawn from the teacher, checksummed, replayable."""

import shutil

import numpy as np
import pytest
import torch
import zarr

from kdcache.pipeline.cache import (
    CacheMismatch,
    CacheStore,
    draw_classes,
    region_checksum,
    sample_uniforms,
)
from kdcache.pipeline.teach import TeacherSource, load_teacher
from kdcache.pipeline.views import normalize
from kdcache.trainer.data import CachedTargets, TrainViews
from kdcache.verify_cache import verify_cache
from tests.conftest import PLAN, SAMPLES, SHARD_SIZE, teach


def test_sample_arrays_attrs_and_checksums(sampled_cache, cache, data):
    group = zarr.open_group(sampled_cache, mode="r")
    assert group.attrs["samples"] == SAMPLES and "inverse CDF" in group.attrs["sampling"]["method"]
    for name in ("regnet", "regnet28"):
        array = group[f"teachers/{name}/sample_index"]
        assert array.dtype == np.int16
        assert array.shape == (data.num_rows, PLAN.views, SAMPLES)
        assert array.chunks == (SHARD_SIZE, 1, SAMPLES)
    store = CacheStore.open(sampled_cache)
    block = store.read_shard("regnet", data.shards[2])
    assert ((block.sample_index >= 0) & (block.sample_index < data.num_classes)).all()
    view = block.view(1)
    assert region_checksum(view) == store.shard_checksums("regnet")[2, 1]
    view.sample_index[0, 0, 0] = (view.sample_index[0, 0, 0] + 1) % data.num_classes
    assert region_checksum(view) != store.shard_checksums("regnet")[2, 1]  # samples are covered
    # a cache made without samples has none, reads as samples = 0, and is no match for samples
    old = CacheStore.open(cache)
    assert old.samples == 0 and "sample_index" not in zarr.open_group(cache)["teachers/regnet"]
    assert old.read_shard("regnet", data.shards[0]).sample_index is None
    with pytest.raises(CacheMismatch, match="samples: 0 in cache vs 8"):
        old.check_matches(data, samples=8)


def test_drawn_ids_follow_the_teacher_on_the_replayed_views(sampled_cache, data, teacher_path):
    store = CacheStore.open(sampled_cache)
    blocks = [store.read_shard("regnet", s) for s in data.shards_of("train")]
    ids = np.concatenate([b.sample_index for b in blocks]).astype(np.int64)
    top1 = np.concatenate([b.topk_index[..., 0] for b in blocks])
    p_top1 = np.exp(
        np.concatenate([b.topk_logits[..., 0].astype(np.float64) - b.logsumexp for b in blocks])
    )
    # 450 rows x 3 views x 8 draws: the share of draws on the top class is its probability
    assert abs((ids == top1[..., None]).mean() - p_top1.mean()) < 0.02
    # the same ids again from the teacher's logits on the trainer's replayed view
    teacher = load_teacher(teacher_path)
    views = TrainViews(data, CachedTargets(sampled_cache, data, teachers=["regnet"]), resolution=32)
    views.set_epoch(2)
    picked = [s for s in views.iter_views(data.shards_of("train")[1:2]) if s["row"] % 9 == 0]
    images = normalize(
        torch.stack([s["image"] for s in picked]), teacher.spec.mean, teacher.spec.std
    )
    with torch.inference_mode():
        logits = teacher.model(images)
    rows = np.array([s["row"] for s in picked])
    uniforms = sample_uniforms(PLAN.seed, rows, [2], SAMPLES)[:, 0]
    cached = np.concatenate([b.sample_index for b in blocks])[rows, 2]
    np.testing.assert_array_equal(draw_classes(logits, uniforms), cached)


def test_a_rerun_draws_bitwise_the_same_ids(tmp_path, data, teacher_path, sampled_cache, ray_local):
    location = str(tmp_path / "cache.zarr")
    teachers = [TeacherSource(teacher_path, name="regnet")]
    teach(data, teacher_path, location, teachers=teachers, samples=SAMPLES, only_shards=[3])
    rows = slice(3 * SHARD_SIZE, 4 * SHARD_SIZE)
    again, first = zarr.open_group(location), zarr.open_group(sampled_cache)
    for name in ("sample_index", "topk_index", "shard_checksum"):
        part = (3,) if name == "shard_checksum" else rows
        np.testing.assert_array_equal(
            again[f"teachers/regnet/{name}"][part], first[f"teachers/regnet/{name}"][part]
        )


def test_verify_recomputes_the_drawn_ids_and_names_an_altered_one(
    tmp_path, sampled_cache, data, teacher_path
):
    named = {"teachers": {"regnet": teacher_path, "regnet28": teacher_path}}
    assert verify_cache(sampled_cache, data.location, samples=20, **named).ok
    copy = str(tmp_path / "cache.zarr")
    shutil.copytree(sampled_cache, copy)
    ids = zarr.open_group(copy, mode="r+")["teachers/regnet28/sample_index"]
    ids[137, 0, 5] = (ids[137, 0, 5] + 1) % 10
    problems = verify_cache(copy, data.location, samples=0, **named).problems
    assert "shards/train-000001.tar view 0 (teacher regnet28): checksum mismatch" in problems
    assert any("row 137 view 0 (teacher regnet28)" in p for p in problems)
