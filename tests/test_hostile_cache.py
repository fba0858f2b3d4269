"""A cache, its lock file and its catalogue travel between people: nothing they say may hang a
command, exhaust its memory, send it outside the folders the user named, or end in a
traceback. Each case damages a copy of a real cache (taught by Ray) and runs the real command
line in a fresh process: a one-line refusal naming the file and field, exit 2, nothing written;
peak memory is measured in that process above its start-up."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest
from conftest import small_world

from kdcache.errors import CacheBusy, NotInCache, TargetsNotFinite
from kdcache.pipeline.cache import CacheStore, RunLock
from kdcache.pipeline.data import Manifest
from kdcache.pipeline.views import ViewPlan

PLAN = ViewPlan(seed=3, views=2)
GIB = 2**30

RUN = """
import json, sys
import torch, zarr  # the libraries every command loads: start-up, not the command's work
import kdcache.pipeline.cache.store, kdcache.tools.cache.inspect_cache
from kdcache.tools.cli.main import main
from kdcache.tools.bench.peak_memory import restart_peak, status
start = restart_peak()  # the peak starts again from the RSS after the imports
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exit:
    code = exit.code if isinstance(exit.code, int) else 1
print(json.dumps({"code": code, "above_start": status("VmHWM") - start}), file=sys.stderr)
"""


def kdcache(*argv, cwd: pathlib.Path, timeout: float = 120) -> tuple[int, str, int]:
    """Run the command line in a fresh process: (exit code, its output without the last
    line, peak RSS above the process's start-up)."""
    result = subprocess.run([sys.executable, "-c", RUN, *map(str, argv)], cwd=cwd,
                            capture_output=True, text=True, timeout=timeout)  # fmt: skip
    lines = result.stderr.splitlines()
    assert lines, result.stdout
    measured = json.loads(lines[-1])
    return measured["code"], result.stdout + "\n".join(lines[:-1]), measured["above_start"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local) -> pathlib.Path:
    """data/ (200 train rows in 2 shards), teacher.pth, cache.zarr (2 views, top-3)."""
    root = tmp_path_factory.mktemp("hostile-cache")
    small_world(root, PLAN, 3)
    return root


@pytest.fixture
def w(world, tmp_path) -> pathlib.Path:
    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    return copy


def _files(root: pathlib.Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


def _refused(w: pathlib.Path, *argv, culprits: list[str], code: int = 2) -> str:
    """Run ``argv``: exit ``code``, one error line naming every culprit, no traceback,
    nothing written under ``w``."""
    before = _files(w)
    exit_code, output, _ = kdcache(*argv, cwd=w)
    assert "Traceback" not in output, output
    assert exit_code == code, output
    errors = [line for line in output.splitlines() if ": error: " in line]
    assert len(errors) == 1, output
    for culprit in culprits:
        assert culprit in errors[0], errors[0]
    assert _files(w) == before
    return errors[0]


def _edit_attrs(path: pathlib.Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta["attributes"])
    path.write_text(json.dumps(meta))


# -- dataset.manifest and teacher source stay inside the cache's folder -----------------------------
def test_a_recorded_manifest_outside_the_cache_folder_is_refused(w, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(w / "data", outside)
    for recorded in (str(outside / "manifest.parquet"), "../elsewhere/manifest.parquet"):
        _edit_attrs(w / "cache.zarr" / "zarr.json",
                    lambda a, r=recorded: a["dataset"].update(manifest=r))  # fmt: skip
        _refused(w, "inspect", w / "cache.zarr",
                 culprits=["dataset field manifest", recorded, "--data"])  # fmt: skip
    # the user names it: read
    code, output, _ = kdcache("inspect", w / "cache.zarr", "--data", outside, cwd=w)
    assert code == 0, output


def test_a_recorded_manifest_that_is_a_fifo_is_refused_without_hanging(w):
    os.mkfifo(w / "pipe.parquet")
    _edit_attrs(w / "cache.zarr" / "zarr.json",
                lambda a: a["dataset"].update(manifest="pipe.parquet"))  # fmt: skip
    _refused(w, "inspect", w / "cache.zarr",
             culprits=["dataset field manifest", "pipe.parquet", "not a regular file"])  # fmt: skip


def test_a_recorded_teacher_outside_the_cache_folder_is_refused(w, tmp_path):
    shutil.copy(w / "teacher.pth", tmp_path / "secret.pth")
    teacher = w / "cache.zarr" / "teachers" / "regnet" / "zarr.json"
    _edit_attrs(teacher, lambda a: a.update(source=str(tmp_path / "secret.pth")))
    _refused(w, "verify", w / "cache.zarr", "--samples", "2",
             culprits=["teachers/regnet field source", "secret.pth"])  # fmt: skip
    os.mkfifo(w / "pipe.pth")
    _edit_attrs(teacher, lambda a: a.update(source="pipe.pth"))
    _refused(w, "verify", w / "cache.zarr", "--samples", "2",
             culprits=["teachers/regnet field source", "not a regular file"])  # fmt: skip


# -- the codec chain is the format's, exactly ---------------------------------------------------------
def _gzip_bomb(path: pathlib.Path, size: int) -> None:
    """A gzip stream of ``size`` zero bytes, written without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(2**20)
    with path.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(packer.compress(block))
        f.write(packer.flush())


def test_an_edited_codec_chain_is_refused_before_any_chunk_is_read(w):
    array = w / "cache.zarr" / "teachers" / "regnet" / "topk_logits"
    meta = json.loads((array / "zarr.json").read_text())
    inner = meta["codecs"][0]["configuration"]["chunk_shape"]
    meta["chunk_grid"]["configuration"]["chunk_shape"] = inner  # no storage shards
    meta["codecs"] = [{"name": "bytes", "configuration": {"endian": "little"}},
                      {"name": "gzip", "configuration": {"level": 1}}]  # fmt: skip
    (array / "zarr.json").write_text(json.dumps(meta))
    shutil.rmtree(array / "c")
    (array / "c" / "0" / "0").mkdir(parents=True)
    _gzip_bomb(array / "c" / "0" / "0" / "0", 3 * GIB // 2)
    before = _files(w)
    code, output, above = kdcache("inspect", w / "cache.zarr", cwd=w)
    assert "Traceback" not in output and code == 2, output
    error = next(line for line in output.splitlines() if ": error: " in line)
    assert "topk_logits/zarr.json" in error and "codecs" in error, error
    assert above < GIB, f"{above / 2**20:.0f} MiB above start-up"
    print(f"edited codecs: refused at {above / 2**20:.0f} MiB above start-up; {error}")
    assert _files(w) == before


# -- an unreadable chunk is a bad region; targets of a row the cache lacks --------------------------
def test_inspect_lists_an_unreadable_chunk_and_strict_exits_1(w):
    stored = w / "cache.zarr" / "teachers" / "regnet" / "topk_logits" / "c" / "1" / "0" / "0"
    data = bytearray(stored.read_bytes())
    data[10] ^= 0xFF  # one flipped byte: the inner chunk's crc32c fails
    stored.write_bytes(bytes(data))
    code, output, _ = kdcache("inspect", w / "cache.zarr", cwd=w)
    assert code == 0 and "Traceback" not in output, output
    bad = [line for line in output.splitlines() if line.strip().startswith("BAD")]
    assert len(bad) == 1 and "train-000001.tar view 0" in bad[0], output
    assert "cannot be read" in bad[0]
    code, output, _ = kdcache("inspect", w / "cache.zarr", "--strict", cwd=w)
    assert code == 1 and "Traceback" not in output, output


def test_targets_of_a_row_or_view_the_cache_lacks_is_one_typed_line(world):
    import kdcache as api

    cache = api.open_cache(str(world / "cache.zarr"))
    assert cache.targets(row=150, view=1)["topk_index"].shape == (3,)
    for where in ({"row": 10000, "view": 0}, {"row": -1, "view": 0}, {"row": 0, "view": 2}):
        with pytest.raises(NotInCache) as error:
            cache.targets(**where)
        assert "\n" not in str(error.value) and "cache.zarr" in str(error.value)
        assert ("row" if where["view"] == 0 else "view") in str(error.value)


# -- the run lock file ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content,field",
    [("[1, 2]", "a JSON object"), ('{"run": "x", "host": "h", "pid": 1, "heartbeat": "soon"}',
     "heartbeat"), ('{"run": "x", "host": "h", "pid": "one", "heartbeat": 1}', "pid")],
)  # fmt: skip
def test_a_malformed_lock_file_is_refused(w, content, field):
    lock = w / "cache.zarr.run-lock.json"
    lock.write_text(content)
    with pytest.raises(CacheBusy) as error, RunLock(str(w / "cache.zarr")):
        pass
    assert "cache.zarr.run-lock.json" in str(error.value) and field in str(error.value)
    assert lock.read_text() == content
    _refused(w, "teach", "--data", w / "data", "--cache", w / "cache.zarr", "--teacher",
             f"regnet={w}/teacher.pth", "--views", "2", "--topk", "3", "--plan-seed", "3",
             culprits=["run-lock.json", field])  # fmt: skip


# -- q6 keeps what fp32 logits say, and refuses what is not finite ---------------------------------
def _block(store: CacheStore, manifest: Manifest, shard, top: float):
    from kdcache.pipeline.cache import ShardTargets

    n, views, k = shard.num_rows, store.plan.views, store.topk
    logits = np.broadcast_to(top - np.arange(k, dtype=np.float32), (n, views, k)).copy()
    index = np.broadcast_to(np.arange(k), (n, views, k)).astype(np.int16)
    lse = np.full((n, views), top + 0.5, np.float32)
    params = store.plan.shard_params(manifest, shard)
    return ShardTargets(params=params.astype(np.float32), topk_logits=logits, topk_index=index,
                        logsumexp=lse)  # fmt: skip


@pytest.mark.parametrize("dtype", ["q6", "fp16"])
def test_q6_encodes_from_fp32_and_overflowing_logits_are_refused(world, tmp_path, dtype):
    manifest = Manifest.read(str(world / "data"))
    store = CacheStore.create(str(tmp_path / "cache.zarr"), manifest=manifest, plan=PLAN,
                              topk=3, splits=["train"], target_dtype=dtype)  # fmt: skip
    store.add_teacher({"name": "t", "arch": "regnety_002", "weights_sha256": "0" * 64,
                       "source": "t.pth", "num_classes": 10})  # fmt: skip
    shard = manifest.shards[0]
    big = _block(store, manifest, shard, 70000.0)  # beyond fp16 (65504), finite in fp32
    if dtype == "q6":  # stored relative to the view's largest logit: exact enough
        store.write_shard("t", shard, [0, 1], big)
        read = store.read_verified("t", shard)
        assert np.isfinite(read.topk_logits).all()
        np.testing.assert_allclose(read.topk_logits[0, 0], [0, -1, -2], atol=0.1)
    else:
        with pytest.raises(TargetsNotFinite, match="view 0: .* NaN or inf once stored as fp16"):
            store.write_shard("t", shard, [0, 1], big)
    bad = _block(store, manifest, manifest.shards[1], 5.0)
    bad.topk_logits[3, 1, 0] = np.inf
    with pytest.raises(TargetsNotFinite, match=r"shard .*\(id 1\), view 1: 1 target values"):
        store.write_shard("t", manifest.shards[1], [0, 1], bad)
    assert not store.views_done("t")[1].any()


# -- a catalogue row names a cache outside the catalogue root -----------------------------------------
def test_cache_auto_refuses_a_catalogued_cache_outside_the_catalogue_root(w):
    from kdcache.pipeline.cache import Catalog

    Catalog(str(w / "catalogue")).record(CacheStore.open(str(w / "cache.zarr")),
                                         Manifest.read(str(w / "data")))  # fmt: skip
    _refused(w, "train", "--data", w / "data", "--cache", "auto", "--catalog", w / "catalogue",
             "--model", "regnety_002", "--epochs", "1", "--kd", "soft", "--workers", "0",
             "--quiet", "--out", w / "run",
             culprits=["catalogue/catalog/", ".parquet", "field cache", str(w / "cache.zarr"),
                       "outside the catalogue root"])  # fmt: skip
    assert not (w / "run").exists()
