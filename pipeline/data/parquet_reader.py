"""Samples of a Parquet file holding encoded images and labels (the layout Hugging Face
datasets publish ImageNet in: ``image`` = struct{bytes, path}, ``label``), decoded a few rows
at a time whatever its row groups declare, as dicts like a tar's samples: ``__key__``,
``__url__``, one entry per column."""

import posixpath
from collections.abc import Iterator

import pyarrow as pa

from kdcache.pipeline.data import urls

BATCH_ROWS = 64  # rows decoded at a time, whatever a row group declares
MIN_ROW_BYTES = 16  # an encoded image takes more; a footer declaring more rows is refused


def row_key(location: str, row: int, path: str | None) -> str:
    """A Parquet row's key: its image's recorded ``path`` without the extension when it has
    one, else ``<file name without suffix>/<row in the file, 8 digits>``."""
    if path:
        return path.rsplit(".", 1)[0] if "." in posixpath.basename(path) else path
    stem = posixpath.basename(location.rstrip("/")).rsplit(".", 1)[0]
    return f"{stem}/{row:08d}"


def parquet_samples(location: str, image_column: str, label_column: str) -> Iterator[dict]:
    """The rows of the Parquet file at ``location`` in order: ``__key__`` (:func:`row_key`),
    ``__url__``, ``image_column`` (the encoded bytes), ``__path__`` (the image's recorded path,
    or None) and ``label_column`` (None where the row has none)."""
    row = 0
    for table in urls.parquet_row_groups(
        location, [image_column, label_column], BATCH_ROWS, MIN_ROW_BYTES
    ):
        images = table.column(image_column).combine_chunks()
        labels = table.column(label_column).to_pylist()
        if pa.types.is_struct(images.type):
            data, paths = images.field("bytes").to_pylist(), _paths(images)
        else:
            data, paths = images.to_pylist(), [None] * len(images)
        for encoded, path, label in zip(data, paths, labels, strict=True):
            yield {"__key__": row_key(location, row, path), "__url__": location,
                   image_column: encoded, label_column: label, "__path__": path}  # fmt: skip
            row += 1


def _paths(images: pa.StructArray) -> list[str | None]:
    if images.type.get_field_index("path") < 0:
        return [None] * len(images)
    return images.field("path").to_pylist()
