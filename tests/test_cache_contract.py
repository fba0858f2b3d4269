"""The cache on disk matches the kdcache/1 contract, and holds the teacher's outputs."""

import numpy as np
import torch
import zarr

from kdcache.pipeline.cache import FORMAT, CacheStore, region_checksum
from kdcache.pipeline.teach import load_teacher
from kdcache.pipeline.views import CROP_FLIP_NAMES, normalize
from kdcache.trainer.data import CachedTargets, TrainViews
from tests.conftest import PLAN, SHARD_SIZE, TOPK


def test_arrays_dtypes_shapes_chunks_and_attrs(cache, data, teacher_path):
    group = zarr.open_group(cache, mode="r")
    n, v, k, s = data.num_rows, PLAN.views, TOPK, len(data.shards)
    assert group.attrs["format"] == FORMAT
    assert group["params"].dtype == np.float32
    assert group["params"].shape == (n, v, len(CROP_FLIP_NAMES))
    assert group["params"].chunks == (SHARD_SIZE, 1, len(CROP_FLIP_NAMES))
    teacher = group["teachers/regnet"]
    expected = {
        "topk_logits": (np.float16, (n, v, k), (SHARD_SIZE, 1, k)),
        "topk_index": (np.int16, (n, v, k), (SHARD_SIZE, 1, k)),
        "logsumexp": (np.float32, (n, v), (SHARD_SIZE, 1)),
        "shard_done": (np.uint8, (s, v), (1, 1)),
        "shard_checksum": (np.uint64, (s, v), (1, 1)),
    }
    for name, (dtype, shape, chunks) in expected.items():
        array = teacher[name]
        assert (array.dtype, array.shape, array.chunks) == (np.dtype(dtype), shape, chunks), name
    attrs = group.attrs.asdict()
    assert attrs["dataset"]["fingerprint"] == data.fingerprint
    assert attrs["plan"]["seed"] == PLAN.seed and attrs["plan"]["views"] == PLAN.views
    assert attrs["plan"]["param_names"] == list(CROP_FLIP_NAMES)
    assert attrs["topk"] == TOPK and attrs["splits"] == ["train"]
    assert attrs["tool_version"]
    identity = teacher.attrs.asdict()
    assert identity["arch"] == "regnety_002"
    assert identity["weights_sha256"] == load_teacher(teacher_path).weights_sha256
    assert identity["preprocessing"]["resolution"] == 32


def test_ledger_values_and_unwritten_rows(cache, data):
    store = CacheStore.open(cache)
    done = store.shard_done("regnet")
    assert done.tolist() == [s.split == "train" for s in data.shards]
    checksums = store.shard_checksums("regnet")
    for shard in data.shards_of("train"):
        block = store.read_shard("regnet", shard)
        for view in range(PLAN.views):
            assert region_checksum(block.view(view)) == checksums[shard.id, view]
        np.testing.assert_array_equal(block.params, PLAN.shard_params(data, shard))
        assert np.isfinite(block.topk_logits.astype(np.float32)).all()
        assert (np.diff(block.topk_logits.astype(np.float32), axis=-1) <= 0).all()  # descending
    group = zarr.open_group(cache, mode="r")
    # rows of the short shard's tail and of the test shards were never written
    assert np.isnan(group["teachers/regnet/topk_logits"][450:500]).all()
    assert (group["teachers/regnet/topk_index"][500:] == -1).all()
    assert (group["teachers/regnet/shard_checksum"][5:] == 0).all()
    assert (group["teachers/regnet/shard_done"][5:] == 0).all()


def test_cached_topk_equals_teacher_on_the_trainers_replayed_view(cache, data, teacher_path):
    teacher = load_teacher(teacher_path)
    source = CachedTargets(cache, data)
    spec = teacher.spec
    views = TrainViews(data, source, resolution=spec.resolution)
    sampled = {7, 123, 249, 333, 449}
    for epoch in range(PLAN.views):
        views.set_epoch(epoch)
        picked = [s for s in views.iter_views(data.shards_of("train")) if s["row"] in sampled]
        assert len(picked) == len(sampled)
        images = normalize(torch.stack([s["image"] for s in picked]), spec.mean, spec.std)
        with torch.inference_mode():
            logits = teacher.model(images)
        for sample, full in zip(picked, logits, strict=True):
            assert sample["view"] == epoch
            target = sample["targets"]["regnet"]
            values, index = full.topk(TOPK)
            torch.testing.assert_close(
                target["topk_logits"], values.half().float(), rtol=2e-3, atol=2e-3
            )
            assert target["topk_index"].tolist() == index.tolist()
            torch.testing.assert_close(
                target["logsumexp"], torch.logsumexp(full, 0), rtol=1e-5, atol=1e-5
            )
            assert sample["label"] == data.labels[sample["row"]]
