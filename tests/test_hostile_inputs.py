"""Hostile inputs: an edited manifest, catalogue row or cache description, or an
image that is small on disk and huge in pixels, cannot make kdcache write outside its folders,
read outside them, fetch from the network or exhaust memory. Every case runs the real command
line in its own process and asserts: exit != 0 with one line naming the culprit (or the skip
counted), nothing created in a sentinel folder the hostile input points at, zero requests to a
local HTTP server the input names, and every process's peak RSS under a bound (a monitor kills
a process that passes it, so a regression fails the test instead of the machine)."""

import hashlib
import http.server
import io
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import session_address, small_world
from PIL import Image
from test_bad_inputs import cli  # noqa: F401  (the fixture)

from kdcache.pipeline.cache import CacheStore, Catalog
from kdcache.pipeline.cache.catalog import SCHEMA as CATALOG_SCHEMA
from kdcache.pipeline.cache.integrity import IDENTITY_ATTR, identity_digests
from kdcache.pipeline.data import Manifest, ShardInfo
from kdcache.pipeline.data.manifest import (
    MANIFEST_FORMAT,
    METADATA_KEY,
    fingerprint,
    write_manifest,
)
from kdcache.pipeline.views import ViewPlan

PLAN = ViewPlan(seed=3, views=2)
SHARD0 = "shards/train-000000.tar"
MEMORY_BOUND = 2 << 30  # peak RSS of any process of a command
HUGE_SIDE = 12000  # a 1-bit PNG of 12000 x 12000 is ~17 KB on disk, 144 MP decoded
HUGE_ROWS = 250


# -- the watchers: an HTTP server that counts requests, a memory monitor ---------------------------
@pytest.fixture(scope="module")
def server(world):
    """A local HTTP server that answers every GET with shard 0's tar and counts requests."""
    body = (world / "data" / SHARD0).read_bytes()
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.hits = hits
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()


class MemoryMonitor:
    """Polls every process below this one (a command and the session's Ray workers) and
    records the largest RSS seen; kills a process above the bound."""

    def __init__(self, bound: int):
        self.bound, self.peak, self.killed = bound, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for process in me.children(recursive=True):
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self.peak = max(self.peak, rss)
                if rss > self.bound:
                    self.killed.append((process.pid, rss))
                    process.kill()
            time.sleep(0.02)


@pytest.fixture
def watched(cli):  # noqa: F811  (the imported fixture)
    """Run a command on the real command line (:func:`test_bad_inputs.cli`: a forked process
    per command) under the memory monitor; returns the result and the peak RSS seen."""

    def run(*args, cwd: pathlib.Path) -> tuple[subprocess.CompletedProcess, int]:
        with MemoryMonitor(MEMORY_BOUND) as monitor:
            result = cli(*args, cwd=cwd)
        assert not monitor.killed, f"a process passed {MEMORY_BOUND >> 20} MiB: {monitor.killed}"
        return result, monitor.peak

    return run


# -- the world the cases damage ---------------------------------------------------------------------
def _png(side: int, mode: str = "1") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (side, side)).save(buffer, "PNG")
    return buffer.getvalue()


def _write_tar(path: pathlib.Path, samples: list[tuple[str, bytes, int]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, image, label in samples:
            for name, data in ((f"{key}.png", image), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _huge_dataset(root: pathlib.Path, classes: list[str]) -> None:
    """``root``: a train shard of HUGE_ROWS identical small-file/huge-pixel PNGs and a test
    shard of one small one, with the manifest ``shard`` would write for them (what a hostile
    producer hands over)."""
    huge, small = _png(HUGE_SIDE), _png(28, "L")
    (root / "shards").mkdir(parents=True)
    keys = [f"huge/{i:04d}" for i in range(HUGE_ROWS)]
    labels = [i % len(classes) for i in range(HUGE_ROWS)]
    _write_tar(root / SHARD0, list(zip(keys, [huge] * HUGE_ROWS, labels, strict=True)))
    _write_tar(root / "shards/test-000000.tar", [("small/0000", small, 0)])
    sides = [HUGE_SIDE] * HUGE_ROWS + [28]
    table = pa.table({
        "row": [*range(HUGE_ROWS), HUGE_ROWS], "key": [*keys, "small/0000"],
        "shard": [0] * HUGE_ROWS + [1], "label": [*labels, 0],
        "split": ["train"] * HUGE_ROWS + ["test"], "height": sides, "width": sides,
        "sha1": [hashlib.sha1(huge).hexdigest()] * HUGE_ROWS + [hashlib.sha1(small).hexdigest()],
    })  # fmt: skip
    shards = [
        ShardInfo(0, SHARD0, "train", HUGE_ROWS),
        ShardInfo(1, "shards/test-000000.tar", "test", 1),
    ]
    write_manifest(str(root / "manifest.parquet"), table, dataset="huge", classes=classes,
                   channels=1, shard_size=HUGE_ROWS, shards=shards, pixel_mean=[0.5],
                   pixel_std=[0.25])  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local) -> pathlib.Path:
    """data/ (200 train rows in 2 shards, 100 test), teacher.pth (random regnety_002 at 28 px),
    cache.zarr (2 views, top-3, teacher 'regnet'), huge/ (a shard of huge-pixel PNGs),
    huge-folder/ (an ImageFolder with one 13000 x 13000 PNG)."""
    root = tmp_path_factory.mktemp("hostile")
    manifest = small_world(root, PLAN, 3)
    _huge_dataset(root / "huge", manifest.classes)
    for name, data in (("a", _png(13000)), ("b", _png(16, "L"))):
        (root / "huge-folder" / "train" / name).mkdir(parents=True)
        (root / "huge-folder" / "train" / name / f"{name}.png").write_bytes(data)
    return root


# -- ways to make inputs hostile --------------------------------------------------------------------
def _rewrite_meta(w: pathlib.Path, edit: Callable[[dict], None], refingerprint: bool) -> None:
    """Edit the manifest's metadata; with ``refingerprint`` the stored fingerprint is made to
    match again (the hash is no secret: anyone can recompute it)."""
    location = w / "data" / "manifest.parquet"
    table = Manifest.read(str(location)).table
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    edit(meta)
    if refingerprint and meta["format"] == MANIFEST_FORMAT:  # written again, sealed as kdcache does
        write_manifest(str(location), table, dataset=meta["dataset"], classes=meta["classes"],
                       channels=meta["channels"], shard_size=meta["shard_size"],
                       shards=[ShardInfo(**s) for s in meta["shards"]],
                       pixel_mean=meta["pixel_mean"], pixel_std=meta["pixel_std"],
                       samples=meta.get("samples"))  # fmt: skip
        return
    if refingerprint:  # an older format: its fingerprint over every row
        v2 = meta["format"].endswith("/2")  # the old code's fingerprint has no shard argument
        shards = [[ShardInfo(**s) for s in meta["shards"]]] if v2 else []
        meta["fingerprint"] = fingerprint(table, meta["classes"], meta["shard_size"], *shards)
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    pq.write_table(table, location)


def _first_shard_file(file: Callable[[pathlib.Path, str], str], refingerprint: bool = True):
    def damage(w, s, url):
        def edit(meta):
            meta["shards"][0]["file"] = file(w, s, url)

        _rewrite_meta(w, edit, refingerprint)

    return damage


def _secret_tar(w, s, url) -> str:
    """A tar outside the dataset folder (a copy of shard 0, so reading it would "work")."""
    shutil.copy(w / "data" / SHARD0, s / "secret.tar")
    return str(s / "secret.tar")


def _escaping_path(w, s, url) -> str:
    return os.path.relpath(_secret_tar(w, s, url), w / "data")


def _renamed_copy(w, s, url) -> str:
    shutil.copy(w / "data" / SHARD0, w / "data" / "shards" / "copy.tar")
    return "shards/copy.tar"


def catalogue_points_elsewhere(w, s, url):
    """A catalogue row of the world's cache, its ``cache`` edited to a folder in the sentinel
    (which exists, as a cache location somewhere else would) and marked unfinished."""
    catalog = Catalog(str(w / "catalogue"))
    row = catalog.record(CacheStore.open(str(w / "cache.zarr")), Manifest.read(str(w / "data")))[0]
    for path in (w / "catalogue" / "catalog").glob("*.parquet"):
        path.unlink()
    (s / "place.zarr").mkdir()
    row.update(cache=str(s / "place.zarr"), complete=False)
    edited = pa.Table.from_pylist([row], schema=CATALOG_SCHEMA)
    pq.write_table(edited, w / "catalogue" / "catalog" / "edited.parquet")


def _edit_json(path: pathlib.Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def teacher_source_is_a_url(w, s, url):
    path = w / "cache.zarr" / "teachers" / "regnet" / "zarr.json"
    _edit_json(path, lambda meta: meta["attributes"].update(source=f"{url}/teacher.pth"))


def manifest_is_a_url(w, s, url):
    path = w / "cache.zarr" / "zarr.json"
    _edit_json(path, lambda meta: meta["attributes"]["dataset"].update(manifest=f"{url}/m.parquet"))


def factory_in_attrs(w, s, url):
    """A teacher factory named in the cache's attrs, the identity hash recomputed as an editor
    would: importing the module would plant a file in the sentinel folder."""
    (w / "planted_code.py").write_text(f"open({str(s / 'imported')!r}, 'w').close()\n"
                                      "def make():\n    raise SystemExit('ran')\n")  # fmt: skip
    teacher = w / "cache.zarr" / "teachers" / "regnet" / "zarr.json"
    _edit_json(teacher, lambda meta: meta["attributes"].update(arch="factory:planted_code:make"))
    group = w / "cache.zarr" / "zarr.json"
    identity = json.loads(teacher.read_text())["attributes"]
    digest = identity_digests({}, {"regnet": identity})["teachers/regnet"]
    _edit_json(
        group, lambda meta: meta["attributes"][IDENTITY_ATTR].update({"teachers/regnet": digest})
    )


def _declared_views(views: int):
    def damage(w, s, url):
        path = w / "cache.zarr" / "teachers" / "regnet" / "shard_done" / "zarr.json"
        _edit_json(path, lambda meta: meta.update(shape=[2, views]))

    return damage


def evil_model_args(w, s, url):
    """A checkpoint whose stored model kwargs would make timm fetch weights from the server."""
    checkpoint = torch.load(w / "teacher.pth", weights_only=True)
    checkpoint["kdcache"]["spec"]["model_args"] = {
        "pretrained": True,
        "pretrained_cfg_overlay": {"url": f"{url}/weights.pth", "hf_hub_id": None},
        "checkpoint_path": str(s / "weights.pth"),
    }
    torch.save(checkpoint, w / "teacher.pth")


def fifo_in_folder(w, s, url):
    _small_folder(w)
    os.mkfifo(w / "folder" / "train" / "b" / "pipe.png")


def _small_folder(w) -> None:
    for name in ("a", "b"):
        (w / "folder" / "train" / name).mkdir(parents=True, exist_ok=True)
        for index in range(2):
            image = Image.new("RGB", (20, 20), (index * 60, 10, 200 if name == "a" else 0))
            image.save(w / "folder" / "train" / name / f"{index}.png")


def symlinked_file(w, s, url):
    _small_folder(w)
    Image.new("RGB", (20, 20)).save(s / "outside.png")
    (w / "folder" / "train" / "a" / "link.png").symlink_to(s / "outside.png")


def symlinked_class(w, s, url):
    _small_folder(w)
    (s / "c").mkdir()
    Image.new("RGB", (20, 20)).save(s / "c" / "0.png")
    (w / "folder" / "train" / "c").symlink_to(s / "c")


def truncated_jpeg(w, s, url):
    _small_folder(w)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 99, 199)).save(buffer, "JPEG")
    (w / "folder" / "train" / "a" / "cut.jpg").write_bytes(buffer.getvalue()[:300])


def nothing(w, s, url):
    pass


# -- the cases --------------------------------------------------------------------------------------
TRAIN = ["train", "--data", "{w}/data", "--model", "regnety_002", "--epochs", "1", "--batch-size",
         "64", "--quiet", "--workers", "0", "--out", "{w}/run"]  # fmt: skip
CACHED = [*TRAIN, "--kd", "soft", "--cache", "{w}/cache.zarr"]
TEACH = ["teach", "--data", "{w}/data", "--teacher", "regnet={w}/teacher.pth", "--plan-seed",
         "3", "--views", "2", "--topk", "3", "--workers", "1", "--quiet"]  # fmt: skip
SHARD = ["shard", "--out", "{w}/new-data", "--splits", "train", "--quiet"]


@dataclass
class Case:
    name: str
    damage: Callable
    argv: list
    culprit: list[str]  # in the one error line (or the skip line)
    outcome: str = "error"  # or "skip": exit 0, the skip counted; "ok": exit 0
    ray: bool = False  # teach: on the session's Ray (its workers are watched too)


CASES = [
    # 1. a catalogue row sends teach elsewhere
    Case("catalogue-cache-elsewhere", catalogue_points_elsewhere,
         [*TEACH, "--catalog", "{w}/catalogue"], ["{s}/place.zarr", "field cache", ".parquet"],
         ray=True),
    # 2. shard files outside the manifest's folder, fingerprint made to match; a renamed shard
    Case("shard-absolute-path", _first_shard_file(_secret_tar), TRAIN, ["{s}/secret.tar", "manifest.parquet"]),
    Case("shard-dotdot-path", _first_shard_file(_escaping_path), TRAIN, ["secret.tar", "'..'"]),
    Case("shard-url", _first_shard_file(lambda w, s, url: f"{url}/x.tar"), TRAIN,
         ["{url}/x.tar", "URL"]),
    Case("shard-renamed-fingerprint", _first_shard_file(_renamed_copy, refingerprint=False),
         TRAIN, ["manifest.parquet", "fingerprint"]),
    # 3. a teacher source at a URL in the cache's attrs
    Case("verify-teacher-url", teacher_source_is_a_url, ["verify", "{w}/cache.zarr", "--samples", "2"],
         ["teachers/regnet", "source", "{url}/teacher.pth"]),
    Case("verify-manifest-url", manifest_is_a_url, ["verify", "{w}/cache.zarr", "--samples", "2"],
         ["dataset field manifest", "{url}/m.parquet", "--data"]),
    Case("verify-factory-in-attrs", factory_in_attrs,
         ["verify", "{w}/cache.zarr", "--samples", "2", "--teacher", "regnet={w}/teacher.pth"],
         ["teachers/regnet", "factory", "planted_code:make", "--allow-code"]),
    # 4. declared shapes
    Case("inspect-declared-1e10", _declared_views(10**10), ["inspect", "{w}/cache.zarr"],
         ["shard_done/zarr.json", "shape"]),
    Case("train-declared-1e10", _declared_views(10**10), CACHED, ["shard_done/zarr.json", "shape"]),
    Case("inspect-declared-1e8", _declared_views(10**8), ["inspect", "{w}/cache.zarr"],
         ["shard_done/zarr.json", "shape"]),
    Case("verify-declared-1e8", _declared_views(10**8), ["verify", "{w}/cache.zarr", "--samples", "2"],
         ["shard_done/zarr.json", "shape"]),
    # 5. small files, huge pixels: teach on 250 of them, train on them, shard one
    Case("teach-huge-pixels", nothing,
         ["teach", "--data", "{w}/huge", "--cache", "{w}/huge.zarr", "--teacher",
          "regnet={w}/teacher.pth", "--views", "1", "--topk", "3", "--workers", "1", "--quiet"],
         [SHARD0, "huge/0000", "pixels"], ray=True),
    Case("train-huge-pixels", nothing,
         ["train", "--data", "{w}/huge", "--model", "regnety_002", "--epochs", "1", "--batch-size",
          "8", "--resolution", "28", "--quiet", "--workers", "1", "--out", "{w}/run"],
         [SHARD0, "huge/", "pixels", "DataLoader worker"]),
    Case("shard-huge-pixels", nothing, [*SHARD, "--source", "{w}/huge-folder"],
         ["train/a/a.png", "pixels"]),
    Case("shard-huge-pixels-skip", nothing,
         [*SHARD, "--source", "{w}/huge-folder", "--on-bad-image", "skip"],
         ["skipped 1", "train/a/a.png"], outcome="skip"),
    # 7. a truncated JPEG is named (a huge-pixel one above, a bad image in a loader worker too)
    Case("folder-truncated-jpeg", truncated_jpeg, [*SHARD, "--source", "{w}/folder"],
         ["train/a/cut.jpg", "unreadable"]),
    # 6. ImageFolder trust: a FIFO, symlinks leaving the root
    Case("folder-fifo", fifo_in_folder, [*SHARD, "--source", "{w}/folder"], ["train/b/pipe.png"]),
    Case("folder-symlinked-file", symlinked_file, [*SHARD, "--source", "{w}/folder"],
         ["train/a/link.png", "symlink"]),
    Case("folder-symlinked-class", symlinked_class, [*SHARD, "--source", "{w}/folder"],
         ["train/c/0.png", "symlink"]),
    # 9. stored model kwargs that would load weights from elsewhere are left out
    Case("checkpoint-model-args", evil_model_args, [*TEACH, "--cache", "{w}/fresh.zarr"], [],
         outcome="ok", ray=True),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_hostile_input_cannot_escape_fetch_or_exhaust(case, world, server, ray_local, watched,
                                                        tmp_path):  # fmt: skip
    w, sentinel = tmp_path / "w", tmp_path / "sentinel"
    shutil.copytree(world, w, symlinks=True)
    sentinel.mkdir()
    case.damage(w, sentinel, server.url)
    planted = sorted(p.relative_to(sentinel) for p in sentinel.rglob("*"))
    hits = len(server.hits)

    def fill(text: str) -> str:
        return text.format(w=w, s=sentinel, url=server.url)

    argv = [fill(a) for a in case.argv]
    if case.ray:
        argv += ["--address", session_address(ray_local)]
    result, peak = watched(*argv, cwd=w)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    if case.outcome == "error":
        assert result.returncode != 0, output
        lines = [line for line in output.splitlines()
                 if ": error: " in line or line.startswith("teach: FAILED")]  # fmt: skip
    else:
        assert result.returncode == 0, output
        lines = (
            [line for line in output.splitlines() if "skipped" in line] if case.culprit else [""]
        )
    assert len(lines) == 1, output
    for culprit in case.culprit:
        assert fill(culprit) in lines[0], lines[0]
    assert sorted(p.relative_to(sentinel) for p in sentinel.rglob("*")) == planted
    assert len(server.hits) == hits, server.hits[hits:]
    assert peak < MEMORY_BOUND
    print(f"{case.name}: peak RSS {peak / 2**20:.0f} MiB; {lines[0]}")


def test_grey_alpha_images_make_three_channel_data_that_trains(watched, tmp_path):
    """A folder whose images are all grey+alpha (LA) is RGB data (channels 3, the documented
    ImageFolder rule), and a student trains on it."""
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / "la" / split / name).mkdir(parents=True)
            for index in range(3):
                image = Image.new("LA", (24, 24), (index * 80 + (name == "a") * 30, 128))
                image.save(tmp_path / "la" / split / name / f"{index}.png")
    result, _ = watched("shard", "--source", tmp_path / "la", "--out", tmp_path / "data",
                        "--quiet", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Manifest.read(str(tmp_path / "data")).channels == 3
    trained, _ = watched("train", "--data", tmp_path / "data", "--model", "resnet10t", "--epochs",
                         "1", "--batch-size", "2", "--resolution", "32", "--workers", "0",
                         "--quiet", "--out", tmp_path / "run", cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr


def test_symlinks_are_followed_when_asked(watched, tmp_path):
    symlinked_class(tmp_path, tmp_path, None)
    result, _ = watched("shard", "--source", tmp_path / "folder", "--out", tmp_path / "data",
                        "--splits", "train", "--quiet", "--follow-symlinks", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Manifest.read(str(tmp_path / "data")).classes == ["a", "b", "c"]


def test_old_manifests_are_read_and_a_remote_shard_only_when_allowed(world, server, tmp_path):
    """A format-1 manifest (fingerprint without shard files) is still read; a URL outside the
    manifest's folder is read only with ``allow_remote_shards``."""
    w = tmp_path / "w"
    shutil.copytree(world / "data", w / "data")

    def to_v1(meta):
        meta["format"] = "kdcache-manifest/1"
        for shard in meta["shards"]:
            shard.pop("bytes"), shard.pop("sha256")

    _rewrite_meta(w, to_v1, refingerprint=True)
    old = Manifest.read(str(w / "data"))
    assert old.shard_url(old.shards[0]) == str(w / "data" / SHARD0)
    _first_shard_file(lambda w, s, url: f"{url}/x.tar")(w, tmp_path, server.url)
    remote = Manifest.read(str(w / "data"), allow_remote_shards=True)
    assert remote.shard_url(remote.shards[0]) == f"{server.url}/x.tar"
