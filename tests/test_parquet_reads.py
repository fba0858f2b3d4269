"""Parquet is never read from a Python file object with ``pq.read_table`` (exit-134 abort)."""

import pathlib

import pyarrow as pa
import pyarrow.parquet as pq

from kdcache.pipeline.data import urls

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_read_table_on_file_objects():
    """``pq.read_table(f)`` leaves a dataset thread that aborts the interpreter at exit in about
    one run in ten (apache/arrow#34314); every reader goes through ``urls.read_parquet``."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("pipeline", "trainer", "tools", "api")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "read_table(" in line
    ]
    assert offenders == []


def test_read_parquet_reads_the_whole_table(tmp_path):
    table = pa.table({"a": [1, 2, 3]}, metadata={b"k": b"v"})
    pq.write_table(table, tmp_path / "t.parquet")
    back = urls.read_parquet(str(tmp_path / "t.parquet"))
    assert back.equals(table) and back.schema.metadata[b"k"] == b"v"
