"""What ``manifest.parquet`` holds and how its identity is hashed and checked.

Format 3 (written now): rows sorted by row id (so by shard, then position), row groups of
whole shards, and per shard two sha256 digests in the metadata -- of its rows' identity (row,
key, shard, split, sha1) and of its labels. The fingerprint hashes only the metadata (classes,
layout, every shard's file, size, sha256 and digests), so a reader checks it without reading
rows, and checks a shard's rows against their digest when it reads them. The footer also
records a crc32 of the row groups' bytes, checked on every read, so a rewritten file is
refused at once. Formats 1 and 2 (a fingerprint over every row) are still read whole.
"""

import hashlib
import json
import sys
from dataclasses import asdict, dataclass, fields

import numpy as np
import pyarrow as pa

from kdcache.errors import ManifestError

MANIFEST_FORMAT = "kdcache-manifest/3"
OLD_FORMATS = ("kdcache-manifest/1", "kdcache-manifest/2")  # read whole, fingerprint over rows
METADATA_KEY = b"kdcache"
DATA_CRC_KEY = b"kdcache.data_crc32"  # crc32 of the bytes before the footer
SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("key", pa.string()),
        ("shard", pa.int32()),
        ("label", pa.int32()),
        ("split", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("sha1", pa.string()),
    ]
)
# columns a manifest may have besides SCHEMA's: the source file of each sample (ImageFolder)
OPTIONAL_COLUMNS = {"path": pa.string()}
IDENTITY_COLUMNS = ("row", "shard", "split", "key", "sha1")  # a shard's rows_sha256
MAX_SPARE_ROWS = 1 << 16  # shard_size may exceed the largest shard's rows up to this
MIN_MANIFEST_ROW_BYTES = 8  # a row (distinct id, key and image hash) takes more on disk
MIN_SAMPLE_BYTES = {"webdataset": 1024, "parquet": 16}  # a tar member is 512 + 512 at least


@dataclass(frozen=True, slots=True)  # slots: a manifest holds one per shard
class ShardInfo:
    """One shard: its id (index in the manifest), file (a tar, or an indexed Parquet file;
    relative to the manifest's folder, or as confined by :mod:`confine`), split, rows, the
    file's size and sha256 (None in a format-1 manifest) and the sha256 digests of its rows'
    identity and labels (None before format 3)."""

    id: int
    file: str
    split: str
    num_rows: int
    bytes: int | None = None
    sha256: str | None = None
    rows_sha256: str | None = None
    labels_sha256: str | None = None


V2_FIELDS = ("id", "file", "split", "num_rows", "bytes", "sha256")


def _array_bytes(array: pa.ChunkedArray | pa.Array) -> list:
    """An array's values as bytes to hash: integers as little-endian int64; strings as their
    int32 lengths, then their UTF-8 bytes (so no two lists of strings hash alike)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count:
        raise ManifestError(f"a manifest column holds {array.null_count} nulls")
    if not pa.types.is_string(array.type):
        return [np.ascontiguousarray(array.to_numpy(), dtype="<i8").tobytes()]
    offsets = np.frombuffer(array.buffers()[1], np.int32)[
        array.offset : array.offset + len(array) + 1
    ]
    data = array.buffers()[2]
    body = b"" if data is None else memoryview(data)[offsets[0] : offsets[-1]]
    return [np.diff(offsets).astype("<i4").tobytes(), body]


def column_digest(table: pa.Table, names) -> str:
    """sha256 of the columns ``names`` of ``table`` (:func:`_array_bytes`)."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        for part in _array_bytes(table[name]):
            digest.update(part)
    return digest.hexdigest()


def meta_fingerprint(classes: list[str], shard_size: int, shards: list[dict]) -> str:
    """The fingerprint of a format-3 manifest: sha256 of its classes, layout and shards (each
    as recorded, with its rows' digests)."""
    body = {"classes": classes, "shard_size": shard_size, "shards": shards}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def fingerprint(
    table: pa.Table, classes: list[str], shard_size: int, shards: list[ShardInfo] | None = None
) -> str:
    """The fingerprint of formats 1 and 2: sha256 over every row (id, key, shard, label, split,
    sha1), classes, layout and, given ``shards`` (format 2), each shard's file, size, sha256."""
    digest = hashlib.sha256()
    if shards is not None:
        listed = [{k: asdict(s)[k] for k in V2_FIELDS} for s in shards]
        digest.update(json.dumps(listed, sort_keys=True).encode())
    digest.update(json.dumps({"classes": classes, "shard_size": shard_size}).encode())
    for name in ("row", "shard", "label"):
        digest.update(np.ascontiguousarray(table[name].to_numpy(), dtype="<i8").tobytes())
    for name in ("key", "split", "sha1"):
        digest.update("\n".join(table[name].to_pylist()).encode())
    return digest.hexdigest()


_REQUIRED = {"classes": list, "channels": int, "shard_size": int, "shards": list,
             "pixel_mean": list, "pixel_std": list, "fingerprint": str}  # fmt: skip


def checked_meta(location: str, raw: bytes | None) -> dict:
    """The manifest's metadata, each field present and of its type (format checked first), or
    a :class:`ManifestError` naming the file and the field."""
    if raw is None:
        raise ManifestError(f"{location}: Parquet file has no kdcache metadata")
    try:
        meta = json.loads(raw)
    except ValueError as error:
        raise ManifestError(f"{location}: kdcache metadata is not JSON ({error})") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found not in (MANIFEST_FORMAT, *OLD_FORMATS):
        raise ManifestError(f"{location}: format is {found!r}, expected {MANIFEST_FORMAT!r}")
    for name, kind in _REQUIRED.items():
        if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool):
            what = "missing" if name not in meta else f"a {type(meta[name]).__name__}"
            raise ManifestError(
                f"{location}: metadata field {name} is {what}, expected a {kind.__name__} "
                "(a manifest kdcache did not write; write it again with kdcache shard or index)"
            )
    _check_values(location, meta)
    return meta


def _check_values(location: str, meta: dict) -> None:
    channels = meta["channels"]
    for name in ("pixel_mean", "pixel_std"):
        values = meta[name]
        if len(values) != channels or not all(isinstance(v, int | float) for v in values):
            raise ManifestError(
                f"{location}: metadata field {name} is {values!r}, expected {channels} numbers"
            )
    if not all(isinstance(c, str) for c in meta["classes"]) or meta["shard_size"] < 1:
        bad = "classes" if meta["shard_size"] >= 1 else "shard_size"
        raise ManifestError(f"{location}: metadata field {bad} is {meta[bad]!r}")


def shard_infos(location: str, meta: dict) -> list[ShardInfo]:
    """The metadata's shards, each with its fields and id = its position."""
    names = {f.name for f in fields(ShardInfo)}
    shards = []
    for at, shard in enumerate(meta["shards"]):
        if not isinstance(shard, dict) or not set(shard) <= names or shard.get("id") != at:
            raise ManifestError(
                f"{location}: metadata field shards[{at}] is not a shard (fields "
                f"{sorted(names)}, id {at})"
            )
        num_rows = shard.get("num_rows")
        if not isinstance(num_rows, int) or not isinstance(shard.get("file"), str):
            raise ManifestError(
                f"{location}: metadata field shards[{at}].num_rows or file is invalid"
            )
        if isinstance(shard.get("split"), str):  # one string per split, not one per shard
            shard = {**shard, "split": sys.intern(shard["split"])}
        shards.append(ShardInfo(**shard))
    return shards


def check_sizes(location: str, meta: dict, shards: list[ShardInfo], rows: int, size: int) -> None:
    """Refuse, before any row is decoded, a manifest whose footer's ``rows`` differ from its
    shards', a shard longer than ``shard_size`` or than its file can hold, a ``shard_size``
    beyond the data (:data:`MAX_SPARE_ROWS`), or more rows than ``size`` bytes hold."""
    shard_size, declared = meta["shard_size"], sum(s.num_rows for s in shards)
    largest = max((s.num_rows for s in shards), default=0)
    per_sample = MIN_SAMPLE_BYTES.get(meta.get("samples", {}).get("format"), 1024)
    for shard in shards:
        if shard.num_rows < 1 or shard.num_rows > shard_size:
            raise ManifestError(
                f"{location}: shard {shard.id} field num_rows is {shard.num_rows}, expected "
                f"1 to shard_size {shard_size}"
            )
        if shard.bytes is not None and shard.num_rows * per_sample > shard.bytes:
            raise ManifestError(
                f"{location}: shard {shard.id} field num_rows is {shard.num_rows}, more than "
                f"its file's {shard.bytes} bytes hold ({per_sample} bytes a sample at least)"
            )
    if shard_size > max(largest, MAX_SPARE_ROWS):
        raise ManifestError(
            f"{location}: metadata field shard_size is {shard_size}, beyond the data (largest "
            f"shard {largest} rows; at most {max(largest, MAX_SPARE_ROWS)})"
        )
    if rows != declared or rows * MIN_MANIFEST_ROW_BYTES > size:
        raise ManifestError(
            f"{location}: footer field num_rows declares {rows} rows in {size} bytes; the "
            f"shards list {declared} (and a row takes {MIN_MANIFEST_ROW_BYTES} bytes at least)"
        )
