"""Hostile data files (trust, round 3): a compressed or oversized tar, a Parquet file or
manifest declaring far more rows than its bytes can hold, a huge declared ``shard_size``, a
percent-encoded shard path and a manifest missing a field are each refused with one line
naming the file and the field, exit 2, nothing written, and memory measured in the command's
own process stays under 1 GiB above its start-up."""

import io
import json
import pathlib
import subprocess
import sys
import tarfile
import zlib

import pytest
from PIL import Image

GIB = 1 << 30
PROBE = """
import json, resource, sys
import kdcache.tools.cli.main, kdcache.pipeline.data
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = 0
try:
    exec(sys.argv[2])
except SystemExit as error:
    code = error.code if isinstance(error.code, int) else 1
except Exception as error:  # an API call: a one-line error is the command line's exit 2
    from kdcache.errors import KdcacheError
    if not isinstance(error, KdcacheError):
        raise
    print(f"error: {error}", file=sys.stderr)
    code = 2
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) << 10
open(sys.argv[1], "w").write(json.dumps({"code": code, "grew": grew}))
"""


def measured(tmp_path: pathlib.Path, code: str) -> tuple[int, str, int]:
    """Run ``code`` in a fresh Python process: (exit code, stderr, peak RSS growth in bytes
    above the process after importing kdcache's command line)."""
    out = tmp_path / "probe.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), code], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    return result["code"], done.stderr, result["grew"]


def cli(*args) -> str:
    """Python running ``kdcache ARGS`` (for :func:`measured`)."""
    return f"from kdcache.tools.cli.main import main; main({[str(a) for a in args]!r})"


def one_line_error(stderr: str, *names: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line]
    assert len(lines) == 1, stderr[-3000:]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(out, "JPEG")
    return out.getvalue()


def _member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


BOMB_BYTES = 1_500_000_000  # one member: 1.5 GB of zeros


@pytest.fixture(scope="module")
def gzip_bomb(tmp_path_factory) -> pathlib.Path:
    """``bomb.tar``: a gzip stream (about 1.5 MB) of a tar whose one member holds 1.5 GB."""
    path = tmp_path_factory.mktemp("gzip") / "bomb.tar"
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # a gzip stream
    block = bytes(64 << 20)
    with open(path, "wb") as out:
        out.write(packer.compress(_member_header("x/0.jpg", BOMB_BYTES)))
        left = BOMB_BYTES
        while left:
            out.write(packer.compress(block[: min(left, len(block))]))
            left -= min(left, len(block))
        out.write(packer.compress(bytes(1024 - BOMB_BYTES % 512)))
        out.write(packer.flush())
    return path


def test_a_gzip_tar_is_refused_by_index_before_it_inflates(gzip_bomb, tmp_path):
    out = tmp_path / "index"
    code, stderr, grew = measured(tmp_path, cli("index", gzip_bomb, "--out", out))
    assert code == 2
    one_line_error(stderr, str(gzip_bomb), "gzip")
    assert grew < GIB, f"grew {grew >> 20} MiB"
    assert not out.exists() or not any(out.iterdir())


def test_a_gzip_tar_is_refused_by_the_shard_reader(gzip_bomb, tmp_path):
    """What teach and train read a shard with, over a manifest that lists the gzip tar."""
    from kdcache.pipeline.data import ShardInfo

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "bomb.tar").symlink_to(gzip_bomb)
    _write_small_manifest(folder, [ShardInfo(0, "bomb.tar", "train", 1)], ["x/0"])
    read = ("from kdcache.pipeline.data import Manifest, checked_samples\n"
            f"m = Manifest.read({str(folder)!r})\nlist(checked_samples(m, m.shards[0]))")  # fmt: skip
    code, stderr, grew = measured(tmp_path, read)
    assert code == 2
    one_line_error(stderr, "bomb.tar", "gzip")
    assert grew < GIB, f"grew {grew >> 20} MiB"


def _write_small_manifest(folder: pathlib.Path, shards, keys: list[str]) -> None:
    import hashlib

    import pyarrow as pa

    from kdcache.pipeline.data.manifest import write_manifest

    sha1 = hashlib.sha1(_jpeg()).hexdigest()
    size = max(s.num_rows for s in shards)
    shard_of = [s.id for s in shards for _ in range(s.num_rows)]
    rows = [s.id * size + p for s in shards for p in range(s.num_rows)]
    table = pa.table({"row": rows, "key": keys, "shard": shard_of, "label": [0] * len(keys),
                      "split": ["train"] * len(keys), "height": [8] * len(keys),
                      "width": [8] * len(keys), "sha1": [sha1] * len(keys)})  # fmt: skip
    write_manifest(str(folder / "manifest.parquet"), table, dataset="d", classes=["0"],
                   channels=3, shard_size=size, shards=shards,
                   pixel_mean=[0.5] * 3, pixel_std=[0.2] * 3)  # fmt: skip


def test_an_oversized_tar_member_is_refused_before_it_is_read(tmp_path):
    """An uncompressed tar (sparse on disk) whose image member declares 1.5 GB."""
    path = tmp_path / "big.tar"
    with open(path, "wb") as out:
        out.write(_member_header("x/0.jpg", BOMB_BYTES))
        out.truncate(512 + BOMB_BYTES + 1024 + 512)
    out = tmp_path / "index"
    code, stderr, grew = measured(tmp_path, cli("index", path, "--out", out))
    assert code == 2
    one_line_error(stderr, str(path), "x/0.jpg", str(BOMB_BYTES))
    assert grew < GIB, f"grew {grew >> 20} MiB"


def test_an_honest_tar_still_indexes(tmp_path):
    path = tmp_path / "ok.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(3):
            for name, data in ((f"s/{i}.jpg", _jpeg()), (f"s/{i}.cls", b"0")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    code, stderr, _ = measured(tmp_path, cli("index", path, "--out", tmp_path / "index"))
    assert code == 0, stderr
    assert (tmp_path / "index" / "manifest.parquet").exists()


@pytest.fixture
def http_folder(tmp_path):
    """A local HTTP server over ``tmp_path/www``, recording every requested path."""
    import functools
    import http.server
    import threading

    root, hits = tmp_path / "www", []
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def send_head(self):
            hits.append(self.path)
            return super().send_head()

        def log_message(self, *args):
            pass

    handler = functools.partial(Handler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()


def test_a_percent_encoded_shard_path_cannot_leave_a_remote_manifest_folder(http_folder, tmp_path):
    from kdcache.pipeline.data import ShardInfo

    root, url, hits = http_folder
    (root / "data").mkdir()
    (root / "secret.tar").write_bytes(b"secret")
    shard = ShardInfo(0, "%2E%2E/secret.tar", "train", 1, 6, "0" * 64)
    _write_small_manifest(root / "data", [shard], ["x/0"])
    read = ("from kdcache.pipeline.data import Manifest, checked_samples\n"
            f"m = Manifest.read({url + '/data'!r})\nlist(checked_samples(m, m.shards[0]))")  # fmt: skip
    code, stderr, _ = measured(tmp_path, read)
    assert code == 2
    one_line_error(stderr, f"{url}/data/manifest.parquet", "%2E%2E/secret.tar")
    assert not [h for h in hits if "secret" in h or "%2E" in h.upper()], hits
