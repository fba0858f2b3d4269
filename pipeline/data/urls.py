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


def read_parquet(location: str) -> pa.Table:
    """The whole Parquet table at ``location``.

    Read through ``pq.ParquetFile``, never ``pq.read_table`` on a file object: that leaves a
    pyarrow dataset thread holding the Python file object, which it releases during interpreter
    shutdown and aborts the process (exit 134) about one run in ten (apache/arrow#34314).
    """
    with fsspec.open(location, "rb") as f:
        return pq.ParquetFile(f).read()


def resolved(location: str) -> str:
    """``location`` independent of the working directory: local paths made absolute (a
    ``file://`` prefix kept), URLs as given."""
    path = local_path(location)
    if path is None:
        return location
    prefix = "file://" if location.startswith("file://") else ""
    return prefix + os.path.abspath(path)
