"""Growing a cache: more views and another teacher, without touching what exists."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import zarr

from kdcache.pipeline.cache import CacheMismatch, CacheStore
from kdcache.trainer.data import CachedTargets
from tests.conftest import PLAN, SAMPLES, teach

OLD = [
    "params",
    "teachers/regnet/topk_logits",
    "teachers/regnet/topk_index",
    "teachers/regnet/logsumexp",
]


def test_adding_views_keeps_old_views_bitwise_and_readers_see_complete_views(
    tmp_path, data, teacher_path, cache, ray_local
):
    location = str(tmp_path / "cache.zarr")
    shutil.copytree(cache, location)
    before = {name: zarr.open_group(location, mode="r")[name][:] for name in OLD}
    reader = CachedTargets(location, data)  # a trainer that opened the cache before

    # the extension stops after two shards: a reader still gets the old, complete views
    teach(data, teacher_path, location, plan=replace(PLAN, views=5), only_shards=[0, 1])
    during = CachedTargets(location, data)
    assert during.plan.views == PLAN.views
    for source in (reader, during):
        block = source.block(data.shards[2])
        targets = block.targets["regnet"]
        assert targets.topk_logits.shape[1] == PLAN.views and not np.isnan(block.params).any()

    summary = teach(data, teacher_path, location, plan=replace(PLAN, views=5))
    assert summary.views == 250 * 2  # only the missing views of the remaining shards
    group = zarr.open_group(location, mode="r")
    for name in OLD:
        np.testing.assert_array_equal(group[name][:, : PLAN.views], before[name], err_msg=name)
        assert not np.isnan(group[name][:450, PLAN.views :].astype(np.float64)).any()
    store = CacheStore.open(location)
    assert store.plan.views == 5 and store.shard_done("regnet")[:5].all()
    # the new views are what a fresh 5-view cache holds
    fresh = str(tmp_path / "fresh.zarr")
    teach(data, teacher_path, fresh, plan=replace(PLAN, views=5), only_shards=[3])
    np.testing.assert_array_equal(
        zarr.open_group(fresh, mode="r")["teachers/regnet/topk_logits"][300:400],
        group["teachers/regnet/topk_logits"][300:400],
    )
    # a trainer asking for the old number of views still reads the cache
    assert (
        CachedTargets(location, data, plan={"views": PLAN.views})
        .block(data.shards[0])
        .params.shape[1]
        == 3
    )


def test_adding_a_teacher_leaves_the_first_untouched(
    tmp_path, data, teacher_path, cache, ray_local
):
    location = str(tmp_path / "cache.zarr")
    shutil.copytree(cache, location)
    before = {name: zarr.open_group(location, mode="r")[name][:] for name in OLD}
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach

    summary = run_teach(
        TeachConfig(
            manifest=data.location,
            cache=location,
            teachers=[TeacherSource(teacher_path, name="second", resolution=28)],
            plan=PLAN,
            topk=4,
            progress=False,
        )
    )
    assert len(summary.shards_done) == 5
    store = CacheStore.open(location)
    assert store.teacher_names == ["regnet", "second"]
    assert store.teacher_identity("second")["preprocessing"]["resolution"] == 28
    group = zarr.open_group(location, mode="r")
    for name in OLD:
        np.testing.assert_array_equal(group[name][:], before[name], err_msg=name)
    assert store.shard_done("second")[:5].all()


def test_more_views_for_only_some_teachers_is_refused_before_computing(
    tmp_path, data, teacher_path, sampled_cache, ray_local
):
    from kdcache.pipeline.teach import TeacherSource

    location = str(tmp_path / "cache.zarr")
    shutil.copytree(sampled_cache, location)  # teachers regnet and regnet28, 3 views
    more = replace(PLAN, views=4)
    for name in ("regnet", "third"):  # one of the cache's teachers; a new teacher
        with pytest.raises(CacheMismatch, match="regnet28") as refusal:
            teach(data, teacher_path, location, teachers=[TeacherSource(teacher_path, name=name)],
                  plan=more, samples=SAMPLES)  # fmt: skip
        assert "\n" not in str(refusal.value)
    store = CacheStore.open(location)  # nothing computed, nothing grown
    assert store.array_views == 3 and store.teacher_names == ["regnet", "regnet28"]
    assert store.plan.views == 3
