"""The ledger is read once per process as whole arrays, and ``inspect`` streams: one pass over
the shards asked for, each ledger object and each storage object of a shard read at most
twice (its index and its bytes), memory that does not grow with the cache, ``--shards`` for
part of it. Counted with an audit hook on the real files zarr opens."""

import collections
import sys
import tracemalloc

import numpy as np
import pytest
from test_inspect_verify import _synthetic_block

from kdcache.pipeline.cache import CacheStore
from kdcache.tools.cache.inspect_cache import inspect_cache
from kdcache.tools.cache.running_stats import Reservoir
from kdcache.trainer.data import CachedTargets
from tests.conftest import PLAN, TOPK, make_shards

IDENTITY = {"arch": "synthetic", "weights_sha256": "0" * 64, "source": "-", "num_classes": 10,
            "model_args": {}, "preprocessing": {"resolution": 28, "in_chans": 1, "mean": [0.5],
            "std": [0.5], "interpolation": "bilinear-antialias"}}  # fmt: skip
OPENS: collections.Counter = collections.Counter()
_COUNTING = [False]


def _audit(event: str, args: tuple) -> None:
    if _COUNTING[0] and event == "open" and isinstance(args[0], str) and ".zarr/" in args[0]:
        OPENS[args[0].split(".zarr/", 1)[1]] += 1


sys.addaudithook(_audit)


def counted(run):
    """The files under a cache opened by ``run()``, by path inside the cache."""
    OPENS.clear()
    _COUNTING[0] = True
    try:
        run()
    finally:
        _COUNTING[0] = False
    return dict(OPENS)


def _cache(location: str, manifest, teachers=("a", "b")) -> str:
    store = CacheStore.create(location, manifest=manifest, plan=PLAN, topk=TOPK, splits=["train"])
    for name in teachers:
        store.add_teacher({**IDENTITY, "name": name})
        for shard in manifest.shards_of("train"):
            store.write_shard(
                name, shard, list(range(PLAN.views)), _synthetic_block(manifest, shard)
            )
    return location


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """2,000 train rows in 20 shards (and the 5-shard slice's figures to compare)."""
    root = tmp_path_factory.mktemp("ledger")
    manifest = make_shards(root / "data", train_rows=2000, test_rows=0)
    return manifest, _cache(str(root / "cache.zarr"), manifest)


def test_a_read_only_store_reads_each_ledger_object_once(big):
    manifest, location = big
    store = CacheStore.open(location)

    def use_the_ledger():
        for shard in manifest.shards_of("train"):
            for name in ("a", "b"):
                store.pending_views(name, shard.id, PLAN.views)
                store.shard_done(name)
                store.read_region(name, shard, 1)  # checked against the checksum ledger

    opens = counted(use_the_ledger)
    ledger = {k: n for k, n in opens.items() if "/c/" in k and "/shard_" in k}
    assert len(ledger) == 2 * 2 * len(manifest.shards) and set(ledger.values()) == {1}, ledger
    writer = CacheStore.open(location, mode="r+")  # a writer reads fresh every time
    again = counted(lambda: [writer.pending_views("a", 3, 2) for _ in range(3)])
    assert {k: n for k, n in again.items() if "/c/" in k} == {"teachers/a/shard_done/c/3/0": 3}


def test_inspect_opens_each_object_at_most_twice_in_one_pass(big):
    manifest, location = big
    report = {}
    opens = counted(lambda: report.update(inspect_cache(location, manifest.location)))
    assert report["teachers"]["a"]["shards_done"] == 20 and not report["teachers"]["a"]["problems"]
    data = {k: n for k, n in opens.items() if "/c/" in k}
    assert len(data) > 20 * 2 * 3 and max(data.values()) <= 2, sorted(data.items())[:5]


def test_inspect_memory_does_not_grow_with_the_cache(big, data, tmp_path):
    small = _cache(str(tmp_path / "small.zarr"), data)

    def peak(location, manifest) -> int:
        inspect_cache(location, manifest.location)  # imports and metadata warmed
        tracemalloc.start()
        inspect_cache(location, manifest.location)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    manifest, location = big  # four times the rows and shards
    small_peak, big_peak = peak(small, data), peak(location, manifest)
    assert big_peak < 1.5 * small_peak, (small_peak, big_peak)


def test_inspect_of_some_shards(big):
    manifest, location = big
    part = inspect_cache(location, manifest.location, shards="2-4,9")
    whole = inspect_cache(location, manifest.location)
    assert part["teachers"]["a"]["shards_total"] == 4 and part["teachers"]["a"]["shards_done"] == 4
    assert part["teachers"]["a"]["accuracy"] != whole["teachers"]["a"]["accuracy"]
    assert part["teacher_agreement"] == {"a|b": 1.0}
    from kdcache.errors import ConfigError

    with pytest.raises(ConfigError, match="shards: '3-99' is not within the cache's shard ids"):
        inspect_cache(location, manifest.location, shards="3-99")


def test_a_reservoir_is_exact_below_its_size_and_uniform_above():
    values = np.random.default_rng(1).random(5000)
    exact = Reservoir(size=10_000)
    for part in np.array_split(values, 7):
        exact.add(part)
    assert exact.quantiles()["p50"] == np.quantile(values, 0.5)
    sampled = Reservoir(size=500)
    for part in np.array_split(values, 7):
        sampled.add(part)
    assert len(sampled.values) == 500 and sampled.seen == 5000
    assert sampled.quantiles()["mean"] == pytest.approx(values.mean())
    assert abs(sampled.quantiles()["p50"] - 0.5) < 0.06
    assert set(sampled.values) <= set(values)


def test_the_trainer_reads_the_ledger_once_for_its_loader_workers(big):
    manifest, location = big
    targets = CachedTargets(location, manifest, teachers=["a"])
    shards = manifest.shards_of("train")
    opens = counted(lambda: [targets.block(s, [1]) for s in shards])  # as a forked worker would
    assert not [k for k in opens if "/shard_done/" in k or "/shard_checksum/" in k], opens
