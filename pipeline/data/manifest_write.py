"""Writing ``manifest.parquet`` in the current format (:mod:`manifest_format`): rows sorted by
row id, row groups of whole shards, each shard's digests and the fingerprint in the metadata,
the crc32 of the row groups in the footer."""

import json
from dataclasses import asdict, replace

import numpy as np
import pyarrow as pa

from kdcache.errors import ManifestError
from kdcache.pipeline.data import urls
from kdcache.pipeline.data.confine import shard_location
from kdcache.pipeline.data.file_identity import file_identity
from kdcache.pipeline.data.manifest_format import (
    DATA_CRC_KEY,
    IDENTITY_COLUMNS,
    MANIFEST_FORMAT,
    METADATA_KEY,
    OPTIONAL_COLUMNS,
    SCHEMA,
    ShardInfo,
    column_digest,
    meta_fingerprint,
)

GROUP_ROWS = 1 << 16  # a row group holds whole shards, this many rows or more (the last fewer)


def write_manifest(
    location: str,
    table: pa.Table,
    *,
    dataset: str,
    classes: list[str],
    channels: int,
    shard_size: int,
    shards: list[ShardInfo],
    pixel_mean: list[float],
    pixel_std: list[float],
    skipped: list[dict] | None = None,
    samples: dict | None = None,
) -> str:
    """Write ``manifest.parquet`` with its metadata; return the fingerprint.

    ``table`` has a row per sample (columns :data:`SCHEMA`, optionally ``path``) in any order,
    row id = shard * ``shard_size`` + position in the shard. ``pixel_mean`` and ``pixel_std``
    are per-channel statistics of the train split on [0, 1]; ``skipped`` lists source files
    left out as unreadable (``path``, ``error``); ``samples`` says how a shard's samples hold
    image and label when not as kdcache writes them (``format``: webdataset or parquet,
    ``image_extensions``, ``label_field``: a manifest indexed over existing files). The shard
    files must be written already: their sizes and sha256 go into the fingerprint, as given in
    ``shards`` (hashed while written or read) or else read here.
    """
    shards = [s if s.sha256 is not None else
              replace(s, **dict(zip(("bytes", "sha256"),
                                    file_identity(shard_location(location, s.file, allow_remote=True)),
                                    strict=True)))
              for s in shards]  # fmt: skip
    schema = pa.schema(
        [*SCHEMA, *(pa.field(k, t) for k, t in OPTIONAL_COLUMNS.items() if k in table.column_names)]
    )
    table = table.select(schema.names).cast(schema)
    if not (np.diff(table["row"].to_numpy()) > 0).all():  # an indexer's rows come sorted
        table = table.sort_by("row")
    offsets = _check_layout(location, table, shards, shard_size)
    shards = [replace(s, rows_sha256=column_digest(part, IDENTITY_COLUMNS),
                      labels_sha256=column_digest(part, ["label"]))
              for s, part in zip(shards, _parts(table, offsets), strict=True)]  # fmt: skip
    meta = {
        "format": MANIFEST_FORMAT,
        "dataset": dataset,
        "classes": classes,
        "channels": channels,
        "shard_size": shard_size,
        "shards": [asdict(s) for s in shards],
        "pixel_mean": pixel_mean,
        "pixel_std": pixel_std,
        "fingerprint": meta_fingerprint(classes, shard_size, [asdict(s) for s in shards]),
    }
    if skipped:
        meta["skipped"] = skipped
    if samples:
        meta["samples"] = samples
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    urls.write_sealed_parquet(location, _groups(table, offsets), DATA_CRC_KEY)
    return meta["fingerprint"]


def _check_layout(location: str, table: pa.Table, shards, shard_size: int) -> np.ndarray:
    """Row offsets of the shards in the sorted ``table`` (one more at the end), after checking
    that its rows are exactly the shards' (ids shard * shard_size + position)."""
    counts = np.array([s.num_rows for s in shards], dtype=np.int64)
    if any(s.id != at for at, s in enumerate(shards)) or (counts < 1).any():
        raise ManifestError(f"{location}: shards must be numbered 0.. in order, none empty")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    shard_of = np.repeat(np.arange(len(shards)), counts)
    expected = shard_of * shard_size + (np.arange(offsets[-1]) - offsets[shard_of])
    rows, found = table["row"].to_numpy(), table["shard"].to_numpy()
    if len(rows) != len(expected) or (rows != expected).any() or (found != shard_of).any():
        raise ManifestError(
            f"{location}: rows do not match the shards' layout ({len(rows)} rows, the shards "
            f"list {offsets[-1]}; row id = shard * {shard_size} + position)"
        )
    return offsets


def _parts(table: pa.Table, offsets: np.ndarray):
    for start, end in zip(offsets[:-1], offsets[1:], strict=True):
        yield table.slice(start, end - start)


def _groups(table: pa.Table, offsets: np.ndarray) -> list[pa.Table]:
    """``table`` cut at shard boundaries into row groups of :data:`GROUP_ROWS` rows or more."""
    cuts, start = [0], 0
    for end in offsets[1:]:
        if end - start >= GROUP_ROWS:
            cuts.append(int(end))
            start = end
    if cuts[-1] != offsets[-1]:
        cuts.append(int(offsets[-1]))
    return [table.slice(a, b - a) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
