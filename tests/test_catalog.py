"""The catalogue: reuse of identical teacher passes, new entries for any identity change,
and ``--cache auto``."""

import shutil
from dataclasses import replace

import pyarrow.dataset as ds
import pytest
import torch

from kdcache.errors import ManifestError
from kdcache.pipeline.cache import CacheStore, Catalog, resolve_cache
from kdcache.trainer.run import TrainConfig, train
from tests.conftest import PLAN, make_shards, teach


def test_identity_reuse_new_entries_and_auto_pick(tmp_path, data, teacher_path, cache, ray_local):
    root = str(tmp_path / "catalog")
    catalog = Catalog(root)
    catalog.record(CacheStore.open(cache), data)

    # same identity: nothing computed, the existing cache is named; a catalogued cache
    # outside the catalogue root only when the user names it (--cache)
    with pytest.raises(ManifestError, match="field cache .* outside the catalogue root"):
        teach(data, teacher_path, None, catalog=root)
    again = teach(data, teacher_path, cache, catalog=root)
    assert again.reused and again.cache == cache and again.views == 0
    # fewer views than the cache holds is the same identity too
    assert teach(data, teacher_path, cache, catalog=root, plan=replace(PLAN, views=2)).reused

    # every identity change is a new entry
    seed5 = teach(data, teacher_path, None, catalog=root, plan=replace(PLAN, seed=5))
    assert not seed5.reused and seed5.cache.startswith(root) and len(seed5.shards_done) == 5
    teach(data, teacher_path, None, catalog=root, topk=3, only_shards=[0])
    state = torch.load(teacher_path, weights_only=True)
    state["model"]["head.fc.bias"] += 0.5
    other_weights = str(tmp_path / "other.pth")
    torch.save(state, other_weights)
    teach(data, other_weights, None, catalog=root, only_shards=[0])
    other_data = make_shards(tmp_path / "other-data", train_rows=440)
    teach(other_data, teacher_path, None, catalog=root, only_shards=[0])
    rows = catalog.rows()
    assert len(rows) == 5 and len({r["identity"] for r in rows}) == 5
    assert sorted(r["complete"] for r in rows) == [False, False, False, True, True]
    assert ds.dataset(f"{root}/catalog").to_table().num_rows == 5  # readable as one table

    # --cache auto: ambiguous, narrowed, missing
    with pytest.raises(ValueError, match="2 caches fit"):
        resolve_cache(root, data.fingerprint, {}, None)
    assert resolve_cache(root, data.fingerprint, {"seed": 5}, None) == (seed5.cache, "regnet")
    with pytest.raises(ManifestError, match="outside the catalogue root"):  # picked: not named
        resolve_cache(root, data.fingerprint, {"seed": 3, "views": 2}, "regnety_002")
    with pytest.raises(FileNotFoundError, match="no complete cache"):
        resolve_cache(root, data.fingerprint, {"seed": 9}, None)
    with pytest.raises(FileNotFoundError, match="1 unfinished"):
        resolve_cache(root, other_data.fingerprint, {}, None)
    run = tmp_path / "run"
    auto = TrainConfig(
        manifest=data.location,
        out=str(run),
        model="resnet10t",
        kd="soft",
        cache="auto",
        catalog=root,
        plan={"seed": 5},
        epochs=1,
        workers=0,
        progress=False,
    )
    train(auto)
    assert f'"cache": "{seed5.cache}"' in (run / "config.json").read_text()
    # label-space mixing mixes an unmixed cache: its own mixing options do not narrow the pick
    mixed = replace(
        auto, out=str(tmp_path / "mix"), mixing="label", plan={"seed": 5, "mixup_alpha": 0.8}
    )
    train(mixed)
    assert f'"cache": "{seed5.cache}"' in (tmp_path / "mix" / "config.json").read_text()


def test_caches_of_one_identity_are_listed_apart_and_reuse_picks_a_complete_one(
    tmp_path, data, teacher_path, cache, ray_local
):
    root = str(tmp_path / "catalog")
    catalog = Catalog(root)
    cache = str(shutil.copytree(cache, tmp_path / "catalog" / "cache.zarr"))  # under the root
    catalog.record(CacheStore.open(cache), data)  # complete, 3 views
    partial = str(tmp_path / "catalog" / "partial.zarr")  # same identity: 4 views, one shard done
    teach(data, teacher_path, partial, catalog=root, plan=replace(PLAN, views=4), only_shards=[0])
    rows = catalog.rows()
    assert sorted((r["cache"], r["views"], r["complete"]) for r in rows) == sorted(
        [(cache, 3, True), (partial, 4, False)]
    )
    again = teach(data, teacher_path, None, catalog=root)  # what the complete one holds
    assert again.reused and again.cache == cache


def test_reuse_only_a_cache_addressable_as_asked(tmp_path, data, teacher_path, cache, ray_local):
    from kdcache.pipeline.teach import TeacherSource

    root = str(tmp_path / "catalog")
    Catalog(root).record(CacheStore.open(cache), data)  # teacher regnet, complete
    c4 = tmp_path / "c4.zarr"
    other = teach(data, teacher_path, str(c4), catalog=root, only_shards=[0])
    assert not other.reused and other.cache == str(c4) and other.shards_done
    assert CacheStore.open(str(c4)).teacher_names == ["regnet"]
    big = [TeacherSource(teacher_path, name="big")]
    named = teach(data, teacher_path, None, catalog=root, teachers=big, only_shards=[0])
    assert not named.reused and named.cache not in (cache, str(c4))
    assert CacheStore.open(named.cache).teacher_names == ["big"]
    assert CacheStore.open(cache).teacher_names == ["regnet"]  # the session cache untouched
