"""The dataset manifest (``manifest.parquet``): one row per sample, its shard, label and split.

Part of the contract between ``pipeline`` and ``trainer``. Row ids are laid out so that the
cache can give every shard whole chunks: row = shard * shard_size + position in the shard.
What the file holds and how its fingerprint is checked: :mod:`manifest_format` (the current
format checks its metadata and footer on every read, a shard's rows when they are read; older
formats are read whole). Shard file names are checked against the manifest's folder on every
read (:mod:`pipeline.data.confine`).
"""

from functools import cached_property

import numpy as np
import pyarrow as pa

from kdcache.errors import ManifestError
from kdcache.pipeline.data import urls
from kdcache.pipeline.data.confine import shard_location
from kdcache.pipeline.data.manifest_format import (
    DATA_CRC_KEY,
    IDENTITY_COLUMNS,
    MANIFEST_FORMAT,
    METADATA_KEY,
    OLD_FORMATS,
    OPTIONAL_COLUMNS,
    SCHEMA,
    ShardInfo,
    check_sizes,
    checked_meta,
    fingerprint,
    meta_fingerprint,
    shard_infos,
)
from kdcache.pipeline.data.manifest_rows import ParquetRows, TableRows
from kdcache.pipeline.data.manifest_write import write_manifest
from kdcache.pipeline.data.tar_reader import IMAGE_EXTENSIONS, LABEL_FIELD

__all__ = ["MANIFEST_FORMAT", "METADATA_KEY", "OLD_FORMATS", "OPTIONAL_COLUMNS", "SCHEMA",
           "Manifest", "ShardInfo", "fingerprint", "write_manifest"]  # fmt: skip
ENTRY_COLUMNS = (*IDENTITY_COLUMNS, "label")


class Manifest:
    """A read-only view of ``manifest.parquet``: its shards, and per-row values read by shard
    when asked (:class:`RowValues`). ``meta`` is its metadata but for the shard list, which
    is :attr:`shards` (one :class:`ShardInfo` each, not also their dicts)."""

    def __init__(
        self, location: str, rows, meta: dict, shards: list[ShardInfo], *,
        allow_remote_shards: bool = False,
    ):  # fmt: skip
        self.location, self.meta, self.shards, self._rows = location, meta, shards, rows
        self.classes: list[str] = meta["classes"]
        self.channels: int = meta["channels"]
        self.shard_size: int = meta["shard_size"]
        self.fingerprint: str = meta["fingerprint"]
        self._shard_urls = {
            s.id: shard_location(location, s.file, allow_remote=allow_remote_shards)
            for s in self.shards
        }
        self.pixel_mean: tuple[float, ...] = tuple(meta["pixel_mean"])
        self.pixel_std: tuple[float, ...] = tuple(meta["pixel_std"])
        samples = meta.get("samples", {})
        # which member of a sample is its image, and where its label is (kdcache.index records them)
        self.image_extensions: tuple[str, ...] = tuple(
            samples.get("image_extensions", IMAGE_EXTENSIONS)
        )
        self.label_field: str = samples.get("label_field", LABEL_FIELD)
        self.shard_format: str = samples.get("format", "webdataset")  # or parquet

    def __getstate__(self) -> dict:  # per-row values are read again where it is unpickled
        return {k: v for k, v in self.__dict__.items() if k not in ("labels", "aspect", "table")}

    @classmethod
    def read(cls, location: str, *, allow_remote_shards: bool = False) -> "Manifest":
        """Read and check a manifest; a folder means ``<folder>/manifest.parquet``. Shard
        files must lie in its folder; ``allow_remote_shards`` also takes URLs elsewhere. Only
        the footer and metadata are read here (a current manifest; older ones are read whole)."""
        if not location.endswith(".parquet"):
            location = urls.join(location, "manifest.parquet")
        if not urls.exists(location):
            raise FileNotFoundError(f"{location}: no manifest here (run `kdcache shard` first)")
        source = urls.ParquetSource(location, lean_footer=True)
        footer, stored = source.metadata, source.pop_key_values()
        meta = checked_meta(location, stored.pop(METADATA_KEY, None))
        missing = set(SCHEMA.names) - set(source.file.schema_arrow.names)
        if missing:
            raise ManifestError(f"{location}: missing columns {sorted(missing)}")
        if meta["format"] == MANIFEST_FORMAT:
            _check_fingerprint(location, meta)
        shards = shard_infos(location, meta)
        check_sizes(location, meta, shards, footer.num_rows, source.size)
        if meta["format"] == MANIFEST_FORMAT:
            rows = _current_rows(location, source, shards, stored.get(DATA_CRC_KEY))
        else:
            rows = _old_rows(location, source, meta, shards)
        meta = {k: v for k, v in meta.items() if k != "shards"}  # kept as ShardInfo alone
        return cls(location, rows, meta, shards, allow_remote_shards=allow_remote_shards)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_rows(self) -> int:
        """Length of the row-id space (``num_shards * shard_size``; ids of a short shard's tail are unused)."""
        return len(self.shards) * self.shard_size

    def shard_url(self, shard: ShardInfo) -> str:
        """Location of a shard's tar file (checked when the manifest was read)."""
        return self._shard_urls[shard.id]

    def shards_of(self, splits: str | list[str]) -> list[ShardInfo]:
        """The shards of one split or several, in id order."""
        wanted = {splits} if isinstance(splits, str) else set(splits)
        unknown = wanted - {s.split for s in self.shards}
        if unknown:
            raise ManifestError(f"{self.location}: no split named {sorted(unknown)}")
        return [s for s in self.shards if s.split in wanted]

    def shard_rows(self, shard: ShardInfo) -> np.ndarray:
        """Row ids of a shard, in tar order."""
        start = shard.id * self.shard_size
        return np.arange(start, start + shard.num_rows)

    def shard_keys(self, shard: ShardInfo) -> list[str]:
        """Keys of a shard's samples, in tar order."""
        return self.shard_entries(shard)[0]

    def shard_entries(self, shard: ShardInfo) -> tuple[list[str], list[str]]:
        """Keys and image sha1s of a shard's samples, in tar order (checked against the
        shard's digests: only this shard's rows are read)."""
        rows = self._rows.checked(shard.id, ENTRY_COLUMNS)
        return rows["key"].to_pylist(), rows["sha1"].to_pylist()

    def shard_labels(self, shard: ShardInfo) -> np.ndarray:
        """Labels of a shard's samples, in tar order, checked against the shard's digest and
        not kept (a pass over every shard holds one shard's; :attr:`labels` keeps them)."""
        return self._rows.checked(shard.id, ("label",))["label"].to_numpy()

    def column(self, name: str) -> np.ndarray:
        """One column's values for every sample, in row order (``height``, ``width`` ...)."""
        return self._rows.column(name)

    @cached_property
    def table(self) -> pa.Table:
        """Every row, in row order, checked, the file's metadata on its schema (the whole
        manifest in memory: for small data; the metadata is read from the footer again)."""
        stored = urls.ParquetSource(self.location, lean_footer=True).pop_key_values()
        stored.pop(DATA_CRC_KEY, None)  # the file's seal, not the table's
        return self._rows.table().replace_schema_metadata(stored)

    @cached_property
    def labels(self) -> "RowValues":
        """Label per row id (-1 for unused ids), read shard by shard as asked."""
        return RowValues(self, lambda i: self.shard_labels(self.shards[i]), -1)

    @cached_property
    def aspect(self) -> "RowValues":
        """Height / width of the source image per row id (1 for unused ids)."""

        def ratio(index: int) -> np.ndarray:
            part = self._rows.shard(index, ("height", "width"))
            return part["height"].to_numpy() / part["width"].to_numpy()

        return RowValues(self, ratio, 1.0)


class RowValues:
    """Values indexed by row id (an int or an array of them), read a shard at a time and kept;
    ids past a short shard's end give ``fill``."""

    def __init__(self, manifest: Manifest, read, fill):
        self.size, self.read, self.fill = manifest.shard_size, read, fill
        self.num_rows, self._shards = manifest.num_rows, {}

    def _of(self, index: int) -> np.ndarray:
        values = self._shards.get(index)
        if values is None:
            values = self._shards[index] = self.read(index)
        return values

    def __len__(self) -> int:
        return self.num_rows

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self[np.arange(self.num_rows)]
        return values if dtype is None else values.astype(dtype)

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(self.num_rows))
        rows = np.asarray(rows)
        if ((rows < 0) | (rows >= self.num_rows)).any():
            raise IndexError(f"row ids outside 0..{self.num_rows - 1}")
        if rows.ndim == 0:
            values, position = self._of(int(rows) // self.size), int(rows) % self.size
            return values[position] if position < len(values) else values.dtype.type(self.fill)
        shard, position = np.divmod(rows, self.size)
        out = None
        for index in np.unique(shard):
            values, at = self._of(int(index)), shard == index
            if out is None:
                out = np.full(rows.shape, self.fill, dtype=values.dtype)
            inside = at & (position < len(values))
            out[inside] = values[position[inside]]
        return out if out is not None else np.full(rows.shape, self.fill)


def _check_fingerprint(location: str, meta: dict) -> None:
    """A format-3 manifest's metadata matches its fingerprint (checked before any of it is
    used, so an edited field is refused as such)."""
    found = meta_fingerprint(meta["classes"], meta["shard_size"], meta["shards"])
    if found != meta["fingerprint"]:
        raise ManifestError(
            f"{location}: metadata does not match the stored fingerprint (stored "
            f"{meta['fingerprint'][:12]}, computed {found[:12]}); the file was edited"
        )


def _current_rows(
    location: str, source, shards: list[ShardInfo], stored: bytes | None
) -> ParquetRows:
    """The rows of a format-3 manifest, after checking the footer's crc32 of the row groups
    (``stored``; no row is decoded here)."""
    if stored is None or stored.decode() != str(source.data_crc32()):
        what = "is missing" if stored is None else "does not match the row groups"
        raise ManifestError(
            f"{location}: footer field {DATA_CRC_KEY.decode()} {what}: the file was rewritten "
            "since kdcache wrote it, so its rows cannot be trusted to match the fingerprint"
        )
    return ParquetRows(location, source, shards)


def _old_rows(location: str, source, meta: dict, shards: list[ShardInfo]) -> TableRows:
    """The rows of a format-1 or -2 manifest: read whole, checked by its fingerprint over
    every row."""
    table = source.columns(source.file.schema_arrow.names)
    listed = shards if meta["format"] == OLD_FORMATS[1] else None
    found = fingerprint(table, meta["classes"], meta["shard_size"], listed)
    if found != meta["fingerprint"]:
        raise ManifestError(
            f"{location}: rows do not match the stored fingerprint "
            f"(stored {meta['fingerprint'][:12]}, computed {found[:12]}); the file was edited"
        )
    return TableRows(table, shards)
