"""Hostile data files (trust, round 3): a compressed or oversized tar, a Parquet file or
manifest declaring far more rows than its bytes can hold, a huge declared ``shard_size``, a
percent-encoded shard path and a manifest missing a field are each refused with one line
naming the file and the field, exit 2, nothing written, and memory measured in the command's
own process stays under 1 GiB above its start-up."""

import io
import json
import pathlib
import pickle
import subprocess
import sys
import tarfile
import zlib

import pytest
from PIL import Image

GIB = 1 << 30
PROBE = """
import json, sys
import kdcache.tools.cli.main, kdcache.pipeline.data
from kdcache.tools.bench.peak_memory import restart_peak, status
base = restart_peak()  # the peak starts again from the RSS after the imports
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
open(sys.argv[1], "w").write(json.dumps({"code": code, "grew": status("VmHWM") - base}))
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
    shard = ShardInfo(0, "%2E%2E/secret.tar", "train", 1, 10240, "0" * 64)
    _write_small_manifest(root / "data", [shard], ["x/0"])
    read = ("from kdcache.pipeline.data import Manifest, checked_samples\n"
            f"m = Manifest.read({url + '/data'!r})\nlist(checked_samples(m, m.shards[0]))")  # fmt: skip
    code, stderr, _ = measured(tmp_path, read)
    assert code == 2
    one_line_error(stderr, f"{url}/data/manifest.parquet", "%2E%2E/secret.tar")
    assert not [h for h in hits if "secret" in h or "%2E" in h.upper()], hits


# -- manifests and Parquet files declaring more than they hold ----------------------------------
def _honest(folder: pathlib.Path, shards: int = 2, rows: int = 3) -> pathlib.Path:
    """A small current-format manifest over ``shards`` listed shards of ``rows`` rows each (the
    tars themselves are not needed to read the manifest)."""
    from kdcache.pipeline.data import ShardInfo

    folder.mkdir(parents=True)
    infos = [ShardInfo(i, f"s{i}.tar", "train", rows, 10240, "0" * 64) for i in range(shards)]
    keys = [f"s{i}/{p}" for i in range(shards) for p in range(rows)]
    _write_small_manifest(folder, infos, keys)
    return folder / "manifest.parquet"


def _rewrite(location: pathlib.Path, table, edit_meta=None) -> None:
    """Write ``table`` over the manifest at ``location`` with its metadata (edited) kept."""
    import pyarrow.parquet as pq

    from kdcache.pipeline.data.manifest import METADATA_KEY

    meta = json.loads(pq.ParquetFile(location).metadata.metadata[METADATA_KEY])
    if edit_meta:
        edit_meta(meta)
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta)}), location,
                   row_group_size=len(table) or 1)  # fmt: skip


READ = """from kdcache.pipeline.data import Manifest
m = Manifest.read({folder!r})
m.labels[m.shard_rows(m.shards[0])]
m.shard_entries(m.shards[0])
"""


def _constant_rows(count: int):
    import numpy as np
    import pyarrow as pa

    return pa.table({"row": np.zeros(count, np.int64), "key": pa.repeat("k" * 24, count),
                     "shard": np.zeros(count, np.int32), "label": np.zeros(count, np.int32),
                     "split": pa.repeat("train", count), "height": np.ones(count, np.int32),
                     "width": np.ones(count, np.int32), "sha1": pa.repeat("0" * 40, count)})  # fmt: skip


def _one_big_shard(meta: dict, rows: int, file_bytes: int) -> None:
    """One shard of ``rows`` rows in a file of ``file_bytes``, the fingerprint made to match."""
    from kdcache.pipeline.data.manifest_format import meta_fingerprint

    meta["shard_size"] = rows
    meta["shards"] = [{**meta["shards"][0], "num_rows": rows, "bytes": file_bytes}]
    meta["fingerprint"] = meta_fingerprint(meta["classes"], rows, meta["shards"])


@pytest.mark.parametrize(
    ("case", "edit", "names"),
    [
        ("rows beyond the shards", None, ["num_rows", "5000000"]),
        ("one shard of them, in a small file", lambda m: _one_big_shard(m, 5_000_000, 9000),
         ["shard 0", "num_rows"]),
        ("one shard of them, in a big file", lambda m: _one_big_shard(m, 5_000_000, 1 << 40),
         ["num_rows", "5000000"]),
    ],
)  # fmt: skip
def test_a_manifest_declaring_millions_of_constant_rows_is_refused_before_decoding(
    tmp_path, case, edit, names
):
    location = _honest(tmp_path / "data", shards=1, rows=1)
    _rewrite(location, _constant_rows(5_000_000), edit)
    assert location.stat().st_size < 1 << 20
    code, stderr, grew = measured(tmp_path, READ.format(folder=str(tmp_path / "data")))
    assert code == 2, stderr[-2000:]
    one_line_error(stderr, str(location), *names)
    assert grew < GIB, f"grew {grew >> 20} MiB"


def test_a_parquet_shard_declaring_a_huge_row_group_is_refused_by_index(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 1_500_000
    path = tmp_path / "bomb.parquet"
    image = pa.array([_jpeg()], pa.binary()).take(np.zeros(rows, np.int64))
    pq.write_table(pa.table({"image": image, "label": np.zeros(rows, np.int64)}), path,
                   row_group_size=rows)  # fmt: skip
    assert path.stat().st_size < 1 << 20
    out = tmp_path / "index"
    code, stderr, grew = measured(tmp_path, cli("index", path, "--out", out))
    assert code == 2, stderr[-2000:]
    one_line_error(stderr, str(path), "num_rows", str(rows))
    assert grew < GIB, f"grew {grew >> 20} MiB"
    assert not (out / "manifest.parquet").exists()


def test_a_declared_shard_size_beyond_the_data_is_refused_before_allocating(tmp_path):
    from kdcache.pipeline.data import ShardInfo

    folder = tmp_path / "data"
    folder.mkdir()
    shards = [ShardInfo(i, f"s{i}.tar", "train", 2, 10240, "0" * 64) for i in range(2)]
    big = 1 << 36
    import pyarrow as pa

    from kdcache.pipeline.data.manifest import write_manifest

    table = pa.table({"row": [0, 1, big, big + 1], "key": ["a", "b", "c", "d"],
                      "shard": [0, 0, 1, 1], "label": [0] * 4, "split": ["train"] * 4,
                      "height": [8] * 4, "width": [8] * 4, "sha1": ["0" * 40] * 4})  # fmt: skip
    write_manifest(str(folder / "manifest.parquet"), table, dataset="d", classes=["0"],
                   channels=3, shard_size=big, shards=shards, pixel_mean=[0.5] * 3,
                   pixel_std=[0.2] * 3)  # fmt: skip
    code, stderr, grew = measured(tmp_path, READ.format(folder=str(folder)))
    assert code == 2, stderr[-2000:]
    one_line_error(stderr, str(folder / "manifest.parquet"), "shard_size", str(big))
    assert grew < GIB, f"grew {grew >> 20} MiB"


def test_a_manifest_without_pixel_mean_is_refused_in_one_line(tmp_path):
    import pyarrow.parquet as pq

    location = _honest(tmp_path / "data")
    _rewrite(location, pq.read_table(location), lambda meta: meta.pop("pixel_mean"))
    code, stderr, _ = measured(tmp_path, READ.format(folder=str(tmp_path / "data")))
    assert code == 2, stderr[-2000:]
    one_line_error(stderr, str(location), "pixel_mean", "missing")


# -- the current format: rows read by shard, each shard checked as it is read -------------------
def test_rows_edited_with_the_file_resealed_are_refused_when_their_shard_is_read(tmp_path):
    """An edit that keeps the layout and recomputes the footer's crc passes the read (which
    reads no rows) and is refused when the edited shard's rows are read; other shards read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdcache.errors import ManifestError
    from kdcache.pipeline.data import Manifest, urls
    from kdcache.pipeline.data.manifest_format import DATA_CRC_KEY

    location = _honest(tmp_path / "data", shards=3, rows=4)
    table = pq.read_table(location)
    keys = table["key"].to_pylist()
    keys[5], keys[6] = keys[6], keys[5]  # in shard 1
    labels = table["label"].to_pylist()
    labels[9] = 7  # in shard 2
    table = table.set_column(1, "key", pa.array(keys)).set_column(
        3, "label", pa.array(labels, pa.int32())
    )
    urls.write_sealed_parquet(str(location), [table], DATA_CRC_KEY)
    manifest = Manifest.read(str(location))
    assert manifest.shard_entries(manifest.shards[0])[0] == ["s0/0", "s0/1", "s0/2", "s0/3"]
    with pytest.raises(ManifestError, match=r"rows of shard 1 \(s1.tar\).*rows_sha256"):
        manifest.shard_entries(manifest.shards[1])
    with pytest.raises(ManifestError, match=r"labels of shard 2 \(s2.tar\).*labels_sha256"):
        manifest.labels[manifest.shard_rows(manifest.shards[2])]


def test_shards_are_read_from_row_groups_of_whole_shards(tmp_path, monkeypatch):
    """Row groups holding several shards each: every shard's keys, labels and row ids come
    back as written, short shards' unused row ids give -1."""
    from kdcache.pipeline.data import Manifest, ShardInfo, manifest_write

    monkeypatch.setattr(manifest_write, "GROUP_ROWS", 5)
    folder = tmp_path / "data"
    folder.mkdir()
    counts = [3, 4, 2, 4, 1]
    shards = [ShardInfo(i, f"s{i}.tar", "train", n, 10240, "0" * 64) for i, n in enumerate(counts)]
    keys = [f"s{i}/{p}" for i, n in enumerate(counts) for p in range(n)]
    _write_small_manifest(folder, shards, keys)
    manifest = Manifest.read(str(folder))
    assert manifest._rows.source.metadata.num_row_groups == 3
    for shard in manifest.shards:
        assert manifest.shard_keys(shard) == [f"s{shard.id}/{p}" for p in range(shard.num_rows)]
    assert manifest.labels[[0, 3, 4, 7, 8]].tolist() == [0, -1, 0, 0, 0]
    assert manifest.table["key"].to_pylist() == keys
    again = pickle.loads(pickle.dumps(manifest))  # as DataLoader workers receive it
    assert again.shard_keys(again.shards[3]) == manifest.shard_keys(manifest.shards[3])
    assert again.labels[[0, 3, 4]].tolist() == [0, -1, 0]


def test_a_format_2_manifest_is_still_read(tmp_path):
    """Manifests written before the current format are read whole and checked by their
    fingerprint over every row."""
    import pyarrow.parquet as pq

    from kdcache.pipeline.data import Manifest, ShardInfo
    from kdcache.pipeline.data.manifest import fingerprint
    from kdcache.pipeline.data.manifest_format import V2_FIELDS

    location = _honest(tmp_path / "data", shards=2, rows=3)
    table = pq.read_table(location)

    def to_v2(meta):
        meta["format"] = "kdcache-manifest/2"
        meta["shards"] = [{k: s[k] for k in V2_FIELDS} for s in meta["shards"]]
        shards = [ShardInfo(**s) for s in meta["shards"]]
        meta["fingerprint"] = fingerprint(table, meta["classes"], meta["shard_size"], shards)

    _rewrite(location, table, to_v2)
    old = Manifest.read(str(location))
    assert old.shard_keys(old.shards[1]) == ["s1/0", "s1/1", "s1/2"]
    assert old.labels[old.shard_rows(old.shards[1])].tolist() == [0, 0, 0]


@pytest.mark.parametrize("column", ["key", "sha1"])
def test_an_identity_column_edited_with_the_file_resealed_is_refused(tmp_path, column):
    """Every identity column is in its shard's row digest: a row's ``key`` or image ``sha1``
    replaced (the footer's crc recomputed, as an editor would) is refused when the shard is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdcache.errors import ManifestError
    from kdcache.pipeline.data import Manifest, urls
    from kdcache.pipeline.data.manifest_format import DATA_CRC_KEY

    location = _honest(tmp_path / "data", shards=3, rows=4)
    table = pq.read_table(location)
    values = table[column].to_pylist()
    values[5] = "0" * 40 if column == "sha1" else values[0]  # a row of shard 1 edited
    index = table.column_names.index(column)
    table = table.set_column(index, column, pa.array(values, table.schema.field(column).type))
    urls.write_sealed_parquet(str(location), [table], DATA_CRC_KEY)
    manifest = Manifest.read(str(location))
    with pytest.raises(ManifestError, match=r"rows of shard 1 \(s1.tar\).*rows_sha256"):
        manifest.shard_entries(manifest.shards[1])
