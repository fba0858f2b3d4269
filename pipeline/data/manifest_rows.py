"""Where a manifest's rows come from: a shard's rows, or one column in row order.

A current manifest's rows stay in its Parquet file (memory-mapped when local) and are read a
row group at a time, each shard's rows checked against their digests as they are read; a
manifest of an older format is read whole and checked once (:mod:`manifest_format`)."""

from functools import lru_cache

import numpy as np
import pyarrow as pa

from kdcache.errors import ManifestError
from kdcache.pipeline.data.manifest_format import IDENTITY_COLUMNS, ShardInfo, column_digest
from kdcache.pipeline.data.urls import ParquetSource


class ParquetRows:
    """The rows of a current manifest, read from its file by row group (whole shards each)."""

    def __init__(self, location: str, source: ParquetSource, shards: list[ShardInfo]):
        self.location, self.source, self.shards = location, source, shards
        counts = np.array([s.num_rows for s in shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        footer = source.metadata
        sizes = [footer.row_group(g).num_rows for g in range(footer.num_row_groups)]
        self.group_start = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.group_of = np.searchsorted(self.group_start, self.offsets[:-1], side="right") - 1
        ends = self.group_start[np.minimum(self.group_of + 1, len(sizes))]
        if not sizes or (self.offsets[1:] > ends).any():
            raise ManifestError(
                f"{location}: row groups do not hold whole shards as written (the file was "
                "rewritten); its rows cannot be checked against the fingerprint"
            )
        self._group = lru_cache(maxsize=2)(self._read_group)

    def __getstate__(self) -> dict:  # for DataLoader workers: the file is opened again there
        return {k: v for k, v in self.__dict__.items() if k not in ("source", "_group")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.source = ParquetSource(self.location, lean_footer=True)
        self._group = lru_cache(maxsize=2)(self._read_group)

    def _read_group(self, group: int, columns: tuple[str, ...]) -> pa.Table:
        return self.source.row_group(group, columns)

    def shard(self, index: int, columns: tuple[str, ...]) -> pa.Table:
        """The ``columns`` of shard ``index``'s rows, in order, unchecked."""
        group = int(self.group_of[index])
        start = int(self.offsets[index] - self.group_start[group])
        return self._group(group, columns).slice(start, self.shards[index].num_rows)

    def checked(self, index: int, columns: tuple[str, ...]) -> pa.Table:
        """:meth:`shard`, its identity columns checked against the shard's ``rows_sha256``
        and its labels against ``labels_sha256`` (whichever ``columns`` hold)."""
        shard = self.shards[index]
        table = self.shard(index, columns)
        if set(IDENTITY_COLUMNS) <= set(columns):
            _compare(self.location, shard, "rows", column_digest(table, IDENTITY_COLUMNS))
        if "label" in columns:
            _compare(self.location, shard, "labels", column_digest(table, ["label"]))
        return table

    def column(self, name: str) -> np.ndarray:
        """One column (not checked: a column outside the fingerprint) in row order."""
        return self.source.columns([name])[name].to_numpy()

    def table(self) -> pa.Table:
        """Every row, each shard's checked."""
        columns = tuple(self.source.file.schema_arrow.names)
        parts = [self.checked(i, columns) for i in range(len(self.shards))]
        return pa.concat_tables(parts) if parts else self.source.columns(columns)


def _compare(location: str, shard: ShardInfo, which: str, found: str) -> None:
    stored = getattr(shard, f"{which}_sha256")
    if found != stored:
        raise ManifestError(
            f"{location}: the {which} of shard {shard.id} ({shard.file}) do not match their "
            f"fingerprinted digest {which}_sha256 (stored {stored[:12]}, computed {found[:12]}); "
            "the file was edited"
        )


class TableRows:
    """The rows of an older manifest, read whole (checked by its fingerprint) and sorted."""

    def __init__(self, table: pa.Table, shards: list[ShardInfo]):
        self._table = table.sort_by("row")
        counts = np.array([s.num_rows for s in shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])

    def shard(self, index: int, columns: tuple[str, ...]) -> pa.Table:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self._table.select(list(columns)).slice(start, end - start)

    checked = shard  # checked whole when read

    def column(self, name: str) -> np.ndarray:
        return self._table[name].to_numpy()

    def table(self) -> pa.Table:
        return self._table
