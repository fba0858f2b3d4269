"""Format kdcache/2: few objects (sized exactly by the dry run), reads of only the views used,
q8 and q6 targets, and a crc32c on every read (a flipped byte names teacher, shard and view)."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore, WrapperStore

from kdcache.errors import CacheCorrupt
from kdcache.pipeline.cache import (
    CachePlan,
    CacheStore,
    Catalog,
    size_plan,
)
from kdcache.pipeline.cache.q6_layout import T_LOW, decode, encode, packed_size
from kdcache.pipeline.cache.quantize import dequantize, pack_ids, quantize, topk_kl, unpack_ids
from kdcache.tools.bench.target_reads import format1_copy, synthetic_cache
from kdcache.tools.cache.inspect_cache import inspect_cache
from kdcache.trainer.data import CachedTargets, TrainViews
from tests.conftest import make_shards


@pytest.fixture(scope="module")
def full_shards(tmp_path_factory):
    """400 train rows in four full shards of 100 (no short shard: every chunk read is used)."""
    return make_shards(tmp_path_factory.mktemp("full"), train_rows=400, test_rows=100)


def write_cache(location, manifest, views, topk, target_dtype) -> CacheStore:
    """A complete cache of the train split with synthetic teacher ``t``, written by the store."""
    return synthetic_cache(str(location), manifest, views, topk, target_dtype)


def objects(location) -> dict[str, list[Path]]:
    """Storage objects per array (``params``, ``teacher/<name>``), metadata left out."""
    found = {}
    for array in [Path(location) / "params", *(Path(location) / "teachers" / "t").iterdir()]:
        if array.is_dir():
            key = "params" if array.name == "params" else f"teacher/{array.name}"
            found[key] = sorted(p for p in (array / "c").rglob("*") if p.is_file())
    return found


def test_an_imagenet_shaped_plan_needs_few_objects():
    per_view = {}
    for dtype in ("fp16", "q8", "q6"):
        plan = CachePlan(shards=math.ceil(1_281_167 / 1000), shard_size=1000, num_classes=1000,
                         views=100, topk=10, params=5, target_dtype=dtype)  # fmt: skip
        size = size_plan(plan)
        assert all(a["objects"] <= 2000 for a in size["arrays"].values()), size["arrays"]
        per_view[dtype] = size["target_bytes_per_view"]
    # q8 at K = 10, C = 1000: 10 levels + scale 2 + 100 bits of ids + logsumexp 2 (+ crc, index, ledger)
    assert 27 <= per_view["q8"] < 27.2  # ledgers and indexes: 0.15
    # q6: a 78-bit set rank + 4-bit top position + 9 x 6-bit levels + scale 8 + tail 8 = 19 B
    assert packed_size(10, 1000) == 19 and 19 < per_view["q6"] <= 20, per_view


@pytest.mark.parametrize("dtype", ["fp16", "q8", "q6"])
def test_the_dry_run_equals_a_written_cache(data, tmp_path, dtype):
    store = write_cache(tmp_path / "c.zarr", data, views=3, topk=4, target_dtype=dtype)
    plan = CachePlan(shards=len(data.shards_of("train")), shard_size=data.shard_size,
                     num_classes=data.num_classes, views=3, topk=4,
                     params=len(store.plan.param_names), target_dtype=dtype)  # fmt: skip
    expected = size_plan(plan)
    found = objects(tmp_path / "c.zarr")
    assert found.keys() == expected["arrays"].keys()
    for name, files in found.items():
        assert len(files) == expected["arrays"][name]["objects"], name
        assert sum(f.stat().st_size for f in files) == expected["arrays"][name]["bytes"], name
    # the command prints the same totals, without loading the (here absent) teacher
    result = subprocess.run(
        [sys.executable, "-m", "kdcache", "teach", "--dry-run", "--data", data.location,
         "--teacher", str(tmp_path / "absent.pth"), "--views", "3", "--topk", "4",
         "--target-dtype", dtype, "--plan-seed", "1"],
        capture_output=True, text=True, env=os.environ, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    total = sum(sum(f.stat().st_size for f in files) for files in found.values())
    assert f"total: {expected['objects']} objects, {total} bytes" in result.stdout


class CountingStore(WrapperStore):
    """A real local store whose reads are counted: requests and bytes returned."""

    def __init__(self, store):
        super().__init__(store)
        self.requests, self.bytes = 0, 0

    async def get(self, key, prototype, byte_range=None):
        value = await self._store.get(key, prototype, byte_range)
        self.requests += 1
        self.bytes += 0 if value is None else len(value)
        return value


@pytest.mark.parametrize("dtype", ["fp16", "q8", "q6"])
def test_the_trainer_fetches_only_the_views_it_uses(full_shards, tmp_path, dtype):
    views, topk = 8, 10
    write_cache(tmp_path / "c.zarr", full_shards, views=views, topk=topk, target_dtype=dtype)
    targets = CachedTargets(str(tmp_path / "c.zarr"), full_shards)
    counting = CountingStore(LocalStore(str(tmp_path / "c.zarr"), read_only=True))
    targets.store = CacheStore(str(tmp_path / "c.zarr"), zarr.open_group(counting, mode="r"))
    loader = TrainViews(full_shards, targets, resolution=28)
    loader.set_epoch(0)  # opens the arrays and reads the checksum ledger once
    sum(1 for _ in loader.iter_views(full_shards.shards_of("train")))
    counting.requests = counting.bytes = 0
    loader.set_epoch(5)
    seen = [s["view"] for s in loader.iter_views(full_shards.shards_of("train"))]
    assert set(seen) == {5} and len(seen) == 400
    stored = [targets.store._array(None, "params")]
    stored += [targets.store._array("t", n) for n in targets.store._stored_names()]
    used = sum(len(seen) * math.prod(a.shape[2:]) * a.dtype.itemsize for a in stored)
    ratio = counting.bytes / used
    print(f"{dtype}: fetched {counting.bytes} B in {counting.requests} requests for {used} B")
    assert ratio <= 1.25, ratio
    assert counting.requests == 4 * len(stored) * 2  # per shard and array: index, chunk


def test_q8_targets_round_trip_and_are_measured(data, tmp_path):
    rng = np.random.default_rng(0)
    for classes in (10, 1000, 40000):
        ids = rng.integers(0, classes, (50, 3, 10))
        assert (unpack_ids(pack_ids(ids, classes), 10, classes) == ids).all()
    logits = np.sort(rng.normal(0, 3, (500, 10)), -1)[:, ::-1].astype(np.float16)
    lse = logits.astype(np.float32).max(-1) + 0.7
    back, back_lse = dequantize(*quantize(logits, lse))
    relative = logits.astype(np.float32) - logits[:, :1].astype(np.float32)
    assert np.abs(back - relative).max() < (relative[:, -1].min() * -1) / 255  # half a step
    assert np.abs(back_lse - 0.7).max() < 1e-3
    store = write_cache(tmp_path / "q.zarr", data, views=2, topk=4, target_dtype="q8")
    report = inspect_cache(str(tmp_path / "q.zarr"), data.location)
    kl = report["teachers"]["t"]["quantisation_kl"]
    assert 0 < kl < 1e-3 and not report["teachers"]["t"]["problems"]
    assert report["target_dtype"] == "q8" and report["format"] == "kdcache/2"
    assert store.group["teachers/t/topk_logits"].dtype == np.uint8


def _by_id(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per view, ``values`` in ascending order of their class ids."""
    return np.take_along_axis(values, np.argsort(ids, -1), -1)


def test_q6_targets_round_trip_and_are_measured(data, tmp_path):
    import torch

    from kdcache.pipeline.cache import reduce_logits

    rng = np.random.default_rng(0)
    for classes, topk in ((10, 10), (10, 4), (1000, 10), (40000, 10), (1000, 1)):
        full = torch.from_numpy(rng.normal(0, 3, (200, classes)) * rng.uniform(0.2, 3, (200, 1)))
        values, index, lse = reduce_logits(full, topk)
        logits = values.numpy().astype(np.float16)
        packed = encode(logits, index.numpy(), lse.numpy(), classes)
        assert packed.shape == (200, packed_size(topk, classes)) and packed.dtype == np.uint8
        back, back_ids, back_lse = decode(packed, topk, classes)
        # the ids exactly (as a set; the argmax first, other equal decoded logits by id)
        assert (np.sort(back_ids, -1) == np.sort(index.numpy(), -1)).all(), classes
        assert (back_ids[:, 0] == index.numpy()[:, 0]).all()
        assert (np.diff(back, axis=-1) <= 0).all() and (back[:, 0] == 0).all()
        # every logit within half a step of its true value relative to the max: steps of one
        # unit s up to 32 units below the max, then of two
        relative = logits.astype(np.float32) - logits[:, :1].astype(np.float32)
        true = _by_id(relative, index.numpy())
        error = np.abs(_by_id(back, back_ids) - true)
        least = -relative[:, -1:] / 94  # the unit s is at least this, and rounded up < 1/16
        unit = least * 17 / 16 + 2.0**-12
        bound = np.where(-true < 31 * least, unit / 2, unit) + 1e-6
        assert (error <= bound).all(), (classes, (error - bound).max())
        # the tail mass within half a tail step in log-odds (above its floor; below e^-10 the
        # float32 logsumexp, as in fp16 caches, holds too few digits of it)
        head = np.log(np.exp(relative.astype(np.float64)).sum(-1))
        with np.errstate(invalid="ignore", divide="ignore"):  # fp16 logits: "tails" <= 0
            tail = np.log(np.expm1(lse.numpy() - logits[:, 0].astype(np.float64) - head))
        back_head = np.log(np.exp(back.astype(np.float64)).sum(-1))
        if topk < classes:
            back_tail = np.log(np.expm1(back_lse.astype(np.float64) - back_head))
            half = (math.log((classes - topk) / topk) - T_LOW) / 255 / 2
            tail = np.fmax(tail, T_LOW)
            held = tail > -10
            assert (np.abs(back_tail - tail)[held] <= half + 1e-3).all(), classes
            assert (back_tail[~held] < -9).all(), classes
        else:
            assert np.allclose(back_lse, back_head, atol=1e-6)
        kl = topk_kl(_by_id(relative, index.numpy()), lse.numpy() - logits[:, 0],
                     _by_id(back, back_ids), back_lse, topk < classes)  # fmt: skip
        assert kl.max() < 5e-3, (classes, kl.max())
    store = write_cache(tmp_path / "q.zarr", data, views=2, topk=4, target_dtype="q6")
    report = inspect_cache(str(tmp_path / "q.zarr"), data.location)
    kl = report["teachers"]["t"]["quantisation_kl"]
    assert 0 < kl < 5e-3 and not report["teachers"]["t"]["problems"]
    assert report["target_dtype"] == "q6" and report["format"] == "kdcache/2"
    assert store.group["teachers/t/topk_packed"].shape[2:] == (packed_size(4, 10),)
    assert set(store.group["teachers/t"].array_keys()) == {
        "topk_packed", "shard_done", "shard_checksum", "quant_kl"}  # fmt: skip


def _flip(path: Path, position: int) -> int:
    data = bytearray(path.read_bytes())
    position %= len(data)
    data[position] ^= 0x10
    path.write_bytes(bytes(data))
    return position


@pytest.mark.parametrize("dtype, arrays", [("q8", 4), ("q6", 1)])
def test_a_flipped_byte_in_any_object_fails_the_read_that_touches_it(data, tmp_path, dtype, arrays):
    location = tmp_path / "q.zarr"
    write_cache(location, data, views=2, topk=4, target_dtype=dtype)
    rng = np.random.default_rng(1)
    checked = 0
    for name, files in objects(location).items():
        if name == "teacher/quant_kl":  # read by inspect only
            continue
        for path in files:
            original = path.read_bytes()
            _flip(path, int(rng.integers(0, len(original))))
            with pytest.raises(CacheCorrupt) as caught:
                targets = CachedTargets(str(location), data)
                for epoch in range(2):
                    for shard in data.shards_of("train"):
                        targets.block(shard, [epoch])
            message = str(caught.value)
            assert "\n" not in message and "teacher t" in message, message
            assert "shard" in message and "view" in message, message
            path.write_bytes(original)
            checked += 1
    assert checked == 5 * (1 + arrays + 2)  # params, target arrays, 2 ledgers per shard


def test_train_exits_on_a_flipped_byte_naming_teacher_shard_and_view(data, tmp_path):
    location = tmp_path / "q.zarr"
    write_cache(location, data, views=2, topk=4, target_dtype="q8")
    target = location / "teachers" / "t" / "topk_logits" / "c" / "2" / "0" / "0"
    _flip(target, 150)  # shard 2, view 0 (the first epoch's)
    result = subprocess.run(
        [sys.executable, "-m", "kdcache", "train", "--data", data.location, "--cache",
         str(location), "--kd", "soft", "--model", "regnety_002", "--epochs", "1",
         "--batch-size", "64", "--workers", "0", "--quiet", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=os.environ, timeout=240,
    )  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "teacher t" in lines[0] and "train-000002" in lines[0] and "view 0" in lines[0]


def test_a_format1_cache_is_still_read_and_catalogued_as_such(data, tmp_path):
    new = write_cache(tmp_path / "new.zarr", data, views=2, topk=4, target_dtype="fp16")
    format1_copy(new, str(tmp_path / "old.zarr"))  # kdcache/1 as README has it
    shard = data.shards_of("train")[2]
    read = CachedTargets(str(tmp_path / "old.zarr"), data).block(shard, [1])
    expected = CachedTargets(str(tmp_path / "new.zarr"), data).block(shard, [1])
    for name, values in expected.targets["t"].arrays().items():
        assert np.array_equal(read.targets["t"].arrays()[name], values), name
    assert inspect_cache(str(tmp_path / "old.zarr"), data.location)["format"] == "kdcache/1"
    catalog = Catalog(str(tmp_path / "catalog"))
    rows = [
        catalog.record(CacheStore.open(str(tmp_path / n)), data)[0]
        for n in ("old.zarr", "new.zarr")
    ]
    expected = [("kdcache/1", "fp16"), ("kdcache/2", "fp16")]
    assert [(r["format"], r["target_dtype"]) for r in rows] == expected
    stored = sorted(catalog.rows(), key=lambda r: r["cache"])  # new.zarr sorts first
    assert [(r["format"], r["target_dtype"]) for r in stored] == expected[::-1]


FORMAT_PAGE = Path(__file__).resolve().parents[1] / "docs" / "format.md"
_READER_HEAD = r"""
import json, math, sys
sys.modules["kdcache"] = None  # importing kdcache's code would fail here
import numpy as np, zarr
cache, row, view = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
assert zarr.open_group(cache, mode="r").attrs["layout"]["target_dtype"] == "{dtype}"
"""
_READER_TAIL = """
print(json.dumps({"logits": logits.tolist(), "lse": float(lse), "ids": np.asarray(ids).tolist()}))
"""


def format_page_reader(dtype: str) -> str:
    """The plain-zarr reader docs/format.md gives under ``### q8`` or ``### q6``, as written
    (teacher ``NAME`` is ``t`` here), as a script of (cache, row, view) printing what it
    decodes."""
    text = FORMAT_PAGE.read_text()
    section = text[text.index(f"\n### {dtype}\n") :]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert '"teachers/NAME"' in block
    body = block.replace('"teachers/NAME"', '"teachers/t"')
    return _READER_HEAD.replace("{dtype}", dtype) + body + _READER_TAIL


def test_format_md_s_plain_zarr_reader_decodes_q8_targets(data, tmp_path):
    import json

    location = str(tmp_path / "q.zarr")
    write_cache(location, data, views=2, topk=4, target_dtype="q8")
    row, view, shard = 234, 1, data.shards[2]
    result = subprocess.run([sys.executable, "-c", format_page_reader("q8"), location, str(row), str(view)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    plain = json.loads(result.stdout)
    ours = CachedTargets(location, data).block(shard, [view]).targets["t"]
    position = row - shard.id * data.shard_size
    assert np.array_equal(np.float32(plain["logits"]), ours.topk_logits[position, 0])
    assert plain["ids"] == ours.topk_index[position, 0].tolist()
    assert np.float32(plain["lse"]) == ours.logsumexp[position, 0]


def test_format_md_s_plain_zarr_reader_decodes_q6_targets(data, tmp_path):
    import json

    location = str(tmp_path / "q.zarr")
    write_cache(location, data, views=2, topk=4, target_dtype="q6")
    for row, view in ((234, 1), (449, 0)):
        result = subprocess.run([sys.executable, "-c", format_page_reader("q6"), location, str(row), str(view)],
                                capture_output=True, text=True, check=True)  # fmt: skip
        plain = json.loads(result.stdout)
        shard = data.shards[row // data.shard_size]
        ours = CachedTargets(location, data).block(shard, [view]).targets["t"]
        position = row - shard.id * data.shard_size
        assert np.array_equal(np.float32(plain["logits"]), ours.topk_logits[position, 0])
        assert plain["ids"] == ours.topk_index[position, 0].tolist()
        assert np.isclose(plain["lse"], ours.logsumexp[position, 0], rtol=1e-6)


def test_topk_kl_is_the_kl_of_top_k_plus_tail_as_one_outcome():
    """The quantisation KL a cache records: KL(p || q) over the K shared classes and the tail
    (1 - top-k mass) as one more outcome, against the same sum written out in float64."""
    rng = np.random.default_rng(0)
    full_p, full_q = rng.normal(0, 2, (6, 20)), rng.normal(0, 2, (6, 20))
    ids = np.argsort(-full_p, axis=1)[:, :5]
    lse_p = np.log(np.exp(full_p).sum(1))
    lse_q = np.log(np.exp(full_q).sum(1))
    top_p, top_q = np.take_along_axis(full_p, ids, 1), np.take_along_axis(full_q, ids, 1)
    found = topk_kl(top_p, lse_p, top_q, lse_q)
    p, q = np.exp(top_p - lse_p[:, None]), np.exp(top_q - lse_q[:, None])
    tail_p, tail_q = 1 - p.sum(1), 1 - q.sum(1)
    expected = (p * np.log(p / q)).sum(1) + tail_p * np.log(tail_p / tail_q)
    np.testing.assert_allclose(found, expected, rtol=1e-9)
