"""Paths and fsspec URLs treated alike: local paths, ``file://``, ``s3://`` (with s3fs) and so on."""

import os
import posixpath
import struct
import zlib
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from kdcache.errors import ManifestError, OutputError, ShardError
from kdcache.pipeline.data.parquet_footer import without_key_values
from kdcache.pipeline.data.storage import filesystem, open_file


def is_url(location: str) -> bool:
    """True for ``scheme://...`` locations."""
    return "://" in location


def join(base: str, relative: str) -> str:
    """``relative`` resolved against the folder ``base``; absolute paths and URLs pass through."""
    if is_url(relative) or relative.startswith("/"):
        return relative
    return posixpath.join(base.rstrip("/"), relative)


def parent(location: str) -> str:
    """The folder holding ``location``."""
    return posixpath.dirname(location.rstrip("/")) or "."


def local_path(location: str) -> str | None:
    """The filesystem path for a local location (plain path or ``file://``), else None."""
    if location.startswith("file://"):
        return location[len("file://") :]
    return None if is_url(location) else location


def disk_bytes(location: str) -> int:
    """Bytes stored at ``location`` (a file, or everything under a folder); 0 if absent. A
    local folder is summed as it is walked (memory of one directory's entries, not of every
    file's); an object store is listed whole (one request per 1,000 objects)."""
    path = local_path(location)
    if path is not None and os.path.isdir(path):
        return _folder_bytes(path)
    fs, path = filesystem(location)
    return int(fs.du(path)) if fs.exists(path) else 0


def _folder_bytes(path: str) -> int:
    total, folders = 0, [path]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def exists(location: str) -> bool:
    """Whether a file or folder exists at ``location``."""
    fs, path = filesystem(location)
    return fs.exists(path)


_COPY_CHUNK = 16 << 20
_MAGIC = b"PAR1"


def read_parquet(location: str) -> pa.Table:
    """The whole Parquet table at ``location``.

    The file's bytes are copied through fsspec into memory that Arrow owns, and pyarrow parses
    them from there: no pyarrow object ever holds a Python object. ``pq.ParquetFile(f).read()``
    on a Python file object decodes columns on Arrow's CPU thread pool, and each task keeps the
    page buffers it read from ``f`` -- ``arrow::py::PyBuffer`` objects wrapping Python ``bytes``.
    A worker drops its task after the read has already returned; if the main thread has begun
    interpreter shutdown by then, ``~PyBuffer`` asks for the GIL, Python ends that thread with
    ``pthread_exit``, and the unwind through the noexcept destructor calls ``std::terminate``:
    "terminate called without an active exception", exit 134 (``pq.read_table(f)`` does the
    same from its dataset threads, apache/arrow#34314). Every Parquet read goes through here.
    """
    sink = pa.BufferOutputStream()
    with open_file(location, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            sink.write(chunk)
    return pq.ParquetFile(pa.BufferReader(sink.getvalue())).read()


class ParquetSource:
    """A Parquet file opened to read parts of it: its footer first, then row groups or columns.
    A local file is opened by Arrow itself and read with positioned reads: only the column
    chunks asked for, into Arrow memory freed with the table (a memory map would keep every
    page it touched resident: a pass over a 14.2 M-row manifest's labels grew by 100 MiB). A
    URL is copied into Arrow memory first, as :func:`read_parquet` does. ``lean_footer``
    keeps the footer's key-value metadata out of Arrow (:mod:`parquet_footer`: a manifest's
    shard list is not held parsed while the file is open); :meth:`pop_key_values` has it."""

    def __init__(self, location: str, lean_footer: bool = False):
        self.location, path = location, local_path(location)
        if path is not None:
            self._buffer, self.size = None, os.path.getsize(path)
            source = pa.OSFile(path)
        else:
            sink = pa.BufferOutputStream()
            with open_file(location, "rb") as f:
                while chunk := f.read(_COPY_CHUNK):
                    sink.write(chunk)
            self._buffer = sink.getvalue()
            self.size, source = self._buffer.size, pa.BufferReader(self._buffer)
        if lean_footer:
            self.metadata, self._key_values = _lean_footer(source, self.size, location)
            self.file = pq.ParquetFile(source, metadata=self.metadata)
        else:
            self.file, self._key_values = pq.ParquetFile(source), None
            self.metadata = self.file.metadata  # the footer: row groups, key-value metadata

    def pop_key_values(self) -> dict[bytes, bytes | None]:
        """The footer's key-value metadata, handed over once (a lean source keeps none)."""
        found, self._key_values = self._key_values, {}
        return dict(self.metadata.metadata or {}) if found is None else found

    def row_group(self, index: int, columns: Sequence[str]) -> pa.Table:
        return self.file.read_row_group(index, columns=list(columns), use_threads=False)

    def columns(self, columns: Sequence[str]) -> pa.Table:
        return self.file.read(columns=list(columns), use_threads=False)

    def batches(self, columns: Sequence[str], rows: int) -> Iterator[pa.Table]:
        """The file in order, ``rows`` rows at a time (decoded a batch at a time)."""
        for batch in self.file.iter_batches(rows, columns=list(columns), use_threads=False):
            yield pa.Table.from_batches([batch])

    def data_crc32(self) -> int:
        """crc32 of the file's bytes before its footer (every row group), read in blocks."""
        end = _data_end(self.size, self._tail())
        if self._buffer is not None:
            return zlib.crc32(memoryview(self._buffer)[:end])
        crc, block = 0, bytearray(_COPY_CHUNK)
        with open(local_path(self.location), "rb") as f:
            while end > 0:
                got = f.readinto(memoryview(block)[: min(end, len(block))])
                if not got:
                    break
                crc, end = zlib.crc32(memoryview(block)[:got], crc), end - got
        return crc

    def _tail(self) -> bytes:
        if self._buffer is not None:
            return self._buffer[self.size - 8 :].to_pybytes()
        with open(local_path(self.location), "rb") as f:
            f.seek(self.size - 8)
            return f.read(8)


def _lean_footer(file: pa.NativeFile, size: int, location: str):
    """The footer of the Parquet ``file`` (``size`` bytes) as Arrow's ``FileMetaData`` with an
    empty key-value list, and that list as a dict of bytes (:mod:`parquet_footer`)."""
    tail = file.read_at(8, size - 8) if size >= 12 else b""
    length = struct.unpack("<i", tail[:4])[0] if tail[4:] == _MAGIC else -1
    if not 0 < length <= size - 12:
        raise ManifestError(f"{location}: not a Parquet file (its last 8 bytes)")
    footer = memoryview(file.read_at(length, size - 8 - length))
    kept, found = without_key_values(footer, location)
    whole = _MAGIC + kept + struct.pack("<i", len(kept)) + _MAGIC
    return pq.read_metadata(pa.BufferReader(whole)), found


def _data_end(size: int, tail: bytes) -> int:
    """Where a Parquet file's footer begins, from its last 8 bytes (footer length, ``PAR1``)."""
    return size - 8 - struct.unpack("<i", tail[:4])[0]


def parquet_row_groups(
    location: str, columns: list[str], rows: int, min_row_bytes: int = 0
) -> Iterator[pa.Table]:
    """The ``columns`` of the Parquet file at ``location`` in order, ``rows`` rows at a time
    (a missing column is a :class:`ShardError` naming the file's columns). A file whose footer
    declares more rows than its size holds at ``min_row_bytes`` a row is refused first."""
    source = ParquetSource(location)
    declared = source.metadata.num_rows
    if declared * min_row_bytes > source.size:
        raise ShardError(
            f"{location}: footer field num_rows declares {declared} rows in {source.size} "
            f"bytes, fewer than the {min_row_bytes} bytes a row holds at least"
        )
    names = source.file.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ShardError(f"{location}: no column {missing[0]!r} (its columns: {', '.join(names)})")
    yield from source.batches(columns, rows)


def write_sealed_parquet(location: str, groups: Sequence[pa.Table], seal_key: bytes) -> None:
    """Write ``groups`` (tables of one schema) as one Parquet file, one row group each, its
    footer recording under ``seal_key`` the crc32 of every byte before the footer
    (:meth:`ParquetSource.data_crc32`). Written twice into Arrow memory: the first pass gives
    the crc of the row groups, which the second writes identically, then the footer."""
    crc = data = None
    for _ in range(2):
        data = None  # the first pass's bytes go before the second is written
        sink = pa.BufferOutputStream()
        writer = pq.ParquetWriter(sink, groups[0].schema)
        for group in groups:
            writer.write_table(group, row_group_size=max(len(group), 1))
        if crc is not None:
            writer.add_key_value_metadata({seal_key: str(crc)})
        writer.close()
        data = sink.getvalue()
        end = _data_end(data.size, data[data.size - 8 :].to_pybytes())
        found = zlib.crc32(memoryview(data)[:end])
        if crc is not None and found != crc:
            raise OutputError(f"{location}: Parquet writer was not deterministic; nothing written")
        crc = found
    write_bytes(location, memoryview(data))


def write_parquet(location: str, table: pa.Table) -> None:
    """Write ``table`` as one Parquet file at ``location`` (a path or an fsspec URL).

    Encoded into an Arrow in-memory buffer, then written through fsspec as plain bytes: like
    :func:`read_parquet`, pyarrow never works on a Python file object. Every Parquet write goes
    through here.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes(location, memoryview(sink.getvalue()))


def write_bytes(location: str, data: bytes | memoryview) -> None:
    """Write a whole file so that a failed write never leaves a partial one behind: locally to
    a temporary file in the same folder, then renamed over ``location``; on an object store
    (whose uploads are whole or nothing) written, then its size read back. A failure (disk
    full, read-only, no permission) is an :class:`OutputError` naming the location."""
    path = local_path(location)
    try:
        if path is not None:
            temporary = f"{path}.tmp-{os.getpid()}"
            try:
                with open(temporary, "wb") as f:
                    f.write(data)
                os.replace(temporary, path)
            finally:
                if os.path.exists(temporary):
                    os.remove(temporary)
            return
        fs, remote = filesystem(location)
        with fs.open(remote, "wb") as f:
            f.write(data)
        if fs.size(remote) != len(data):
            fs.rm(remote)
            raise OSError(f"read back {fs.size(remote)} bytes, wrote {len(data)}")
    except OSError as error:
        raise OutputError(
            f"{location}: could not write {len(data)} bytes ({error.strerror or error}); "
            "nothing was left there (is the disk full or the folder read-only?)"
        ) from error


def resolved(location: str) -> str:
    """``location`` independent of the working directory: local paths made absolute (a
    ``file://`` prefix kept), URLs as given."""
    path = local_path(location)
    if path is None:
        return location
    prefix = "file://" if location.startswith("file://") else ""
    return prefix + os.path.abspath(path)


def relative_to(location: str, folder: str) -> str:
    """``location`` as a path relative to ``folder`` when both are local (what a cache records
    of its manifest, read back with :func:`join` against the cache's folder), else
    independent of the working directory (:func:`resolved`)."""
    path, base = local_path(location), local_path(folder)
    if path is None or base is None:
        return resolved(location)
    return os.path.relpath(os.path.abspath(path), os.path.abspath(base))
