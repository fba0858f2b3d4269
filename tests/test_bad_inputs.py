"""Bad inputs, as a careless user and a hostile disk make them: each is refused by the
real command line with exit != 0 and one line naming the culprit, and nothing written before
(data, cache, a previous run) changes. One small world (2 train shards, a random-weight
teacher, a 2-view cache, a one-epoch run) is built per module and copied for every case."""

import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import zarr
from conftest import session_address, small_world, teach

from kdcache.pipeline.cache import CacheStore, region_checksum
from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import TeacherSource
from kdcache.pipeline.views import ViewPlan

PLAN = ViewPlan(seed=3, views=2)
TOPK = 3
SHARD0 = "shards/train-000000.tar"


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local) -> pathlib.Path:
    """data/ (200 train rows in 2 shards, 100 test), teacher.pth (random regnety_002 at 28 px),
    cache.zarr (2 views, top-3, teacher 'regnet'), run/ (one epoch of cached soft KD)."""
    from kdcache.trainer.run import TrainConfig, train

    root = tmp_path_factory.mktemp("world")
    small_world(root, PLAN, TOPK)
    train(TrainConfig(manifest=str(root / "data"), out=str(root / "run"), model="regnety_002",
                      kd="soft", cache=str(root / "cache.zarr"), epochs=1, batch_size=64,
                      workers=0, progress=False))  # fmt: skip
    return root


# The real command line, in its own process per command: a server that imported kdcache, torch
# and timm once forks a child per command, which runs ``kdcache.tools.cli.main.main(argv)``
# with its stdout and stderr in files (and, to play a full disk, a file-size limit: writes
# past it fail). Fresh interpreters would pay the imports again for every case.
SERVER = """
import json, os, resource, signal, sys, traceback
import kdcache.tools.cli.main as cli
import kdcache.trainer.run.engine, kdcache.pipeline.teach.job, kdcache.tools.cache.inspect_cache
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(job["cwd"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            if job["file_limit"]:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_limit"],) * 2)
            cli.main(job["argv"])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])), flush=True)
"""


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    folder = tmp_path_factory.mktemp("cli")

    def run(*args, cwd=None, file_limit: int | None = None) -> subprocess.CompletedProcess:
        out, err = folder / "stdout", folder / "stderr"
        job = dict(argv=[str(a) for a in args], cwd=str(cwd or folder), file_limit=file_limit,
                   stdout=str(out), stderr=str(err))  # fmt: skip
        server.stdin.write(json.dumps(job) + "\n")
        server.stdin.flush()
        code = json.loads(server.stdout.readline())
        return subprocess.CompletedProcess(args, code, out.read_text(), err.read_text())

    yield run
    server.stdin.close()
    server.wait(timeout=60)


def _hashes(root: pathlib.Path, skip: Callable[[pathlib.Path], bool] = lambda p: False) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not skip(p)
    }


# -- ways to break the world ---------------------------------------------------------------------
def _chunk(w, array: str, shard: int = 0, view: int = 0) -> pathlib.Path:
    """The storage object of a teacher array (or ``params``) holding (shard, view): in format
    kdcache/2 one per (shard, view block)."""
    base = w / "cache.zarr" / ("params" if array == "params" else f"teachers/regnet/{array}")
    tail = [] if array == "logsumexp" else ["0"]
    attrs = json.loads((w / "cache.zarr" / "zarr.json").read_text())["attributes"]
    return base.joinpath("c", str(shard), str(view // attrs["layout"]["view_block"]), *tail)


def delete_chunk(w):
    _chunk(w, "topk_logits").unlink()


def flip_a_byte(w):
    """A byte in view 0's inner chunk (the first quarter of the object): the view the one-epoch
    train reads (format 2 reads only the views used)."""
    path = _chunk(w, "topk_logits", view=0)
    data = bytearray(path.read_bytes())
    data[len(data) // 4] ^= 0x40
    path.write_bytes(bytes(data))


def _rewrite(w, array: str, change, checksum: bool) -> None:
    """Rewrite shard 0 view 0 of ``array`` through zarr (valid chunks); with ``checksum`` also
    record the new region's checksum, as a buggy writer would."""
    store = CacheStore.open(str(w / "cache.zarr"), mode="r+")
    group = store.group["teachers/regnet"]
    values = group[array][0:100, 0:1]
    group[array][0:100, 0:1] = change(values)
    if checksum:
        shard = Manifest.read(str(w / "data")).shards[0]
        block = store.read_shard("regnet", shard).view(0)
        group["shard_checksum"][0, 0] = np.uint64(region_checksum(block))


def plausible_logits(w):
    _rewrite(w, "topk_logits", lambda v: (v * 0.5).astype(v.dtype), checksum=False)


def nan_logits_checksummed(w):
    _rewrite(w, "topk_logits", lambda v: np.where(np.arange(v.shape[0])[:, None, None] == 7,
                                                  np.nan, v).astype(v.dtype), checksum=True)  # fmt: skip


def done_but_never_written(w):
    """Shard 1's view 1 emptied (its inner chunks hold only fill values, so zarr drops them
    from their storage objects; view 0 in the same objects stays), its done flag left set."""
    group = zarr.open_group(str(w / "cache.zarr"), mode="r+")
    for array in ("params", "teachers/regnet/topk_logits", "teachers/regnet/topk_index",
                  "teachers/regnet/logsumexp"):  # fmt: skip
        values = group[array]
        values[100:200, 1:2] = np.full((100, 1, *values.shape[2:]), values.fill_value)


def _edit_attrs(w, edit) -> None:
    path = w / "cache.zarr" / "zarr.json"
    meta = json.loads(path.read_text())
    edit(meta["attributes"])
    path.write_text(json.dumps(meta))


def edit_topk(w):
    _edit_attrs(w, lambda attrs: attrs.update(topk=2))


def edit_plan_seed(w):
    _edit_attrs(w, lambda attrs: attrs["plan"].update(seed=4))


def _rewrite_tar(w, change) -> None:
    """Rewrite shard 0's tar with ``change(members)`` applied (a list of (name, bytes))."""
    path = w / "data" / SHARD0
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for name, data in change(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def replace_image(w):
    def change(members):
        images = [i for i, (name, _) in enumerate(members) if name.endswith(".png")]
        first, other = images[3], images[4]
        members[first] = (members[first][0], members[other][1])  # same key, another image
        return members

    _rewrite_tar(w, change)


def drop_a_sample(w):
    def change(members):
        key = members[0][0].rsplit(".", 1)[0]  # the first sample's files go
        return [m for m in members if m[0].rsplit(".", 1)[0] != key]

    _rewrite_tar(w, change)


def truncate_tar(w):
    path = w / "data" / SHARD0
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.9) // 512 * 512])


def corrupt_image_consistently(w):
    """A training image that cannot be decoded, with a manifest that agrees with the tar (as
    `shard` would have written it from a bad source): only decoding finds it."""
    from kdcache.pipeline.data.manifest import write_manifest

    manifest = Manifest.read(str(w / "data"))
    broken = {}

    def change(members):
        index = [i for i, (name, _) in enumerate(members) if name.endswith(".png")][5]
        name, data = members[index]
        members[index] = (name, data[: len(data) // 2])
        broken[name.split(".")[0]] = hashlib.sha1(members[index][1]).hexdigest()
        return members

    _rewrite_tar(w, change)
    table = manifest.table
    keys, sha1 = table["key"].to_pylist(), table["sha1"].to_pylist()
    sha1 = [broken.get(key, value) for key, value in zip(keys, sha1, strict=True)]
    table = table.set_column(table.schema.get_field_index("sha1"), "sha1", [sha1])
    meta = manifest.meta
    write_manifest(str(w / "data" / "manifest.parquet"), table, dataset=meta["dataset"],
                   classes=meta["classes"], channels=meta["channels"],
                   shard_size=meta["shard_size"], shards=manifest.shards,
                   pixel_mean=meta["pixel_mean"], pixel_std=meta["pixel_std"])  # fmt: skip


def delete_shard(w):
    (w / "data" / "shards" / "train-000001.tar").unlink()


class _RunsCode:
    """Pickles as a call of ``os.system`` with ``command``: what a hostile resume.pth holds."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _edit_resume(w, edit) -> None:
    """Rewrite run/resume.pth with ``edit(state)`` applied, its config's paths moved to ``w``
    (so that only the edit makes it unfit)."""
    import torch

    path = w / "run" / "resume.pth"
    state = torch.load(path, weights_only=True)
    root = os.path.dirname(state["config"]["manifest"])
    state["config"] = {name: value.replace(root, str(w)) if isinstance(value, str) else value
                       for name, value in state["config"].items()}  # fmt: skip
    edit(state)
    torch.save(state, path)


def pickled_resume(w):
    """run/resume.pth holding a pickle that runs a shell command when unpickled."""
    _edit_resume(w, lambda state: state.update(rng=_RunsCode(f"touch {w}/code-ran")))


def resume_without_progress(w):
    _edit_resume(w, lambda state: state.pop("progress"))


def nothing(w):
    pass


# -- the cases -----------------------------------------------------------------------------------
TRAIN = ["train", "--data", "{w}/data", "--model", "regnety_002", "--epochs", "1",
         "--batch-size", "64", "--quiet"]  # fmt: skip
CACHED = [*TRAIN, "--kd", "soft", "--cache", "{w}/cache.zarr", "--workers", "1"]
PLAIN = [*TRAIN, "--workers", "1"]
TEACH = ["teach", "--data", "{w}/data", "--cache", "{w}/cache.zarr", "--teacher",
         "regnet={w}/teacher.pth", "--plan-seed", "3", "--topk", "3", "--workers", "1",
         "--quiet"]  # fmt: skip


@dataclass
class Case:
    name: str
    damage: Callable
    argv: list
    culprit: list[str]
    out: str = "{t}/new-run"
    file_limit: int | None = None
    grown: bool = False  # the command may add files and rewrite array metadata (extension)
    leaves_none: list[str] = field(default_factory=list)  # files that must not exist after


CASES = [
    # 1. a deleted chunk; a byte flipped in one
    Case("deleted-chunk", delete_chunk, CACHED, ["teacher regnet", SHARD0, "view 0", "topk_logits"]),
    Case("flipped-byte", flip_a_byte, CACHED, ["teacher regnet", SHARD0]),
    # 2. valid-looking wrong values; non-finite values under a matching checksum
    Case("plausible-values", plausible_logits, CACHED, ["teacher regnet", SHARD0, "view 0", "checksum"]),
    Case("nan-targets", nan_logits_checksummed, CACHED, ["teacher regnet", SHARD0, "view 0", "non-finite"]),
    # 3. an image replaced under the same key: train and teach
    Case("replaced-image-train", replace_image, CACHED, [SHARD0, "sha1", "sample"]),
    Case("replaced-image-teach", replace_image, [*TEACH, "--views", "2", "--cache", "{t}/fresh.zarr"],
         [SHARD0, "sha1", "sample"]),
    # 4. a truncated train tar; a missing sample
    Case("truncated-tar", truncate_tar, PLAIN, [SHARD0]),
    Case("dropped-sample", drop_a_sample, PLAIN, [SHARD0, "key"]),
    # 5. train --out over another run
    Case("out-holds-a-run", nothing, CACHED, ["{w}/run", "config.json", "with resume", "with overwrite"],
         out="{w}/run"),
    # 6. identity attrs edited
    Case("edited-topk", edit_topk, CACHED, ["topk", "identity"]),
    Case("edited-plan-seed", edit_plan_seed, CACHED, ["plan", "identity"]),
    # 7. inspect --strict on a corrupt cache
    Case("inspect-nan", nan_logits_checksummed, ["inspect", "{w}/cache.zarr", "--strict"],
         [SHARD0, "non-finite"]),
    Case("inspect-done-without-data", done_but_never_written,
         ["inspect", "{w}/cache.zarr", "--strict"], ["shards/train-000001.tar", "no data"]),
    # 8. invalid resolutions
    Case("resolution-0", nothing, [*PLAIN, "--resolution", "0"], ["resolution 0", "16"]),
    Case("resolution-3", nothing, [*PLAIN, "--resolution", "3"], ["resolution 3", "16"]),
    Case("resolution-vs-patch", nothing,
         [*PLAIN, "--model", "deit_tiny_patch16_224", "--model-arg", "patch_size=8",
          "--model-arg", "depth=1", "--resolution", "28"], ["resolution 28", "patch size 8"]),
    # extending a cache whose existing views are corrupt
    Case("extend-corrupt", plausible_logits, [*TEACH, "--views", "3"],
         ["teacher regnet", SHARD0, "view 0", "checksum"], grown=True),
    # a run folder's resume.pth that runs code when unpickled; one that lacks a field
    Case("pickled-resume", pickled_resume, [*CACHED, "--workers", "0", "--resume"], ["{w}/run/resume.pth"],
         out="{w}/run", leaves_none=["{w}/code-ran"]),
    Case("resume-without-progress", resume_without_progress, [*CACHED, "--workers", "0", "--resume"],
         ["{w}/run/resume.pth", "progress"], out="{w}/run"),
    # tracebacks that are now one line
    Case("unreadable-image", corrupt_image_consistently, PLAIN, [SHARD0, "sample", "image"]),
    Case("missing-shard", delete_shard, PLAIN, ["shards/train-000001.tar", "missing"]),
    Case("out-not-writable", nothing, CACHED, ["{w}/teacher.pth/run"], out="{w}/teacher.pth/run"),
    Case("disk-full-checkpoint", nothing, CACHED, ["checkpoint", "could not write"],
         file_limit=1 << 20, leaves_none=["{t}/new-run/checkpoint.pth"]),
    Case("disk-full-manifest", nothing,
         ["shard", "--out", "{t}/new-data", "--limit", "train=60", "--limit", "test=10",
          "--shard-size", "1", "--quiet"],
         ["manifest.parquet", "could not write"], file_limit=16384,
         leaves_none=["{t}/new-data/manifest.parquet"]),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_bad_input_is_refused_in_one_line_and_changes_nothing(case, world, cli, tmp_path,
                                                              ray_local):  # fmt: skip
    w = tmp_path / "w"
    shutil.copytree(world, w)
    case.damage(w)

    def fill(text: str) -> str:
        return text.format(w=w, t=tmp_path)

    argv = [fill(a) for a in case.argv]
    if argv[0] == "train":
        argv += ["--out", fill(case.out)]
    skip = (lambda p: p.name == "zarr.json") if case.grown else (lambda p: False)
    before = _hashes(w, skip)
    if argv[0] == "teach":
        argv += ["--address", session_address(ray_local)]  # the session's Ray
    result = cli(*argv, file_limit=case.file_limit)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in (result.stdout + result.stderr).splitlines()
              if ": error: " in line or line.startswith(("teach: FAILED", "  BAD"))]  # fmt: skip
    assert len(errors) == 1, result.stdout + result.stderr
    for culprit in case.culprit:
        assert fill(culprit) in errors[0], errors[0]
    after = _hashes(w, skip)
    assert {k: after.get(k) for k in before} == before
    for path in case.leaves_none:
        assert not os.path.exists(fill(path)), path


def test_a_failed_manifest_write_does_not_block_a_rerun(cli, tmp_path):
    argv = ["shard", "--out", tmp_path / "d", "--limit", "train=60", "--limit", "test=10",
            "--shard-size", "1", "--quiet"]  # fmt: skip
    assert cli(*argv, file_limit=16384).returncode != 0
    assert not (tmp_path / "d" / "manifest.parquet").exists()
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["shards"]  # no temporary left
    rerun = cli(*argv)
    assert rerun.returncode == 0, rerun.stderr
    assert Manifest.read(str(tmp_path / "d")).num_rows == 70


def test_the_dataset_api_refuses_a_corrupt_region(world, tmp_path):
    import kdcache
    from kdcache.errors import CacheCorrupt

    w = tmp_path / "w"
    shutil.copytree(world, w)
    plausible_logits(w)
    cache = kdcache.open_cache(str(w / "cache.zarr"))
    assert cache.targets(row=150, view=0)["topk_logits"].shape == (TOPK,)  # shard 1 is fine
    with pytest.raises(CacheCorrupt, match=f"teacher regnet, shard {SHARD0} .* view 0"):
        cache.targets(row=7, view=0)
    loader = kdcache.KDLoader(str(w / "data"), str(w / "cache.zarr"), batch_size=64, workers=1)
    with pytest.raises(CacheCorrupt) as caught:
        list(loader)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert f"shard {SHARD0}" in message and message.endswith("(in DataLoader worker 0)")


def test_a_cache_without_identity_hash_is_read_and_the_next_teach_writes_it(world, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(world, w)
    _edit_attrs(w, lambda attrs: attrs.pop("identity_sha256"))
    store = CacheStore.open(str(w / "cache.zarr"))
    assert not store.identity_hashed and store.topk == TOPK
    teacher = TeacherSource(str(w / "teacher.pth"), name="regnet")
    teach(Manifest.read(str(w / "data")), None, w / "cache.zarr", teachers=[teacher], plan=PLAN,
          topk=TOPK)  # fmt: skip
    assert CacheStore.open(str(w / "cache.zarr")).identity_hashed
    edit_topk(w)
    with pytest.raises(ValueError, match="attrs topk differ from the identity hash"):
        CacheStore.open(str(w / "cache.zarr"))


def test_inspect_finds_the_manifest_relative_to_the_cache_from_any_directory(world, cli, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(world, w)
    assert zarr.open_group(str(w / "cache.zarr")).attrs["dataset"]["manifest"] == (
        "data/manifest.parquet"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("inspect", w / "cache.zarr", "--strict", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "every done region checks out" in result.stdout


def test_overwrite_replaces_a_run_and_a_refused_one_leaves_it_whole(world, cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    argv = [fill.format(w=world) for fill in PLAIN] + ["--out", run, "--seed", "1"]
    before = _hashes(run)
    refused = cli(*argv, "--overwrite", "--resolution", "3")  # refused for its options
    assert refused.returncode == 2 and _hashes(run) == before
    replaced = cli(*argv, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((run / "config.json").read_text())["seed"] == 1
    assert _hashes(run)["checkpoint.pth"] != before["checkpoint.pth"]
