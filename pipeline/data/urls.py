"""Paths and fsspec URLs treated alike: local paths, ``file://``, ``s3://`` (with s3fs) and so on."""

import os
import posixpath

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


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
    """Bytes stored at ``location`` (a file, or everything under a folder); 0 if absent."""
    fs, path = fsspec.core.url_to_fs(location)
    return int(fs.du(path)) if fs.exists(path) else 0


def exists(location: str) -> bool:
    """Whether a file or folder exists at ``location``."""
    fs, path = fsspec.core.url_to_fs(location)
    return fs.exists(path)


_COPY_CHUNK = 16 << 20


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
    with fsspec.open(location, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            sink.write(chunk)
    return pq.ParquetFile(pa.BufferReader(sink.getvalue())).read()


def write_parquet(location: str, table: pa.Table) -> None:
    """Write ``table`` as one Parquet file at ``location`` (a path or an fsspec URL).

    Encoded into an Arrow in-memory buffer, then written through fsspec as plain bytes: like
    :func:`read_parquet`, pyarrow never works on a Python file object. Every Parquet write goes
    through here.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    with fsspec.open(location, "wb") as f:
        f.write(memoryview(sink.getvalue()))


def resolved(location: str) -> str:
    """``location`` independent of the working directory: local paths made absolute (a
    ``file://`` prefix kept), URLs as given."""
    path = local_path(location)
    if path is None:
        return location
    prefix = "file://" if location.startswith("file://") else ""
    return prefix + os.path.abspath(path)
