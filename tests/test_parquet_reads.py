"""Parquet is read and written only through ``urls.read_parquet`` / ``urls.write_parquet``, which
never give pyarrow a Python file object (the exit-134 abort at interpreter shutdown)."""

import pathlib

import pyarrow as pa
import pyarrow.parquet as pq

from kdcache.pipeline.data import urls

ROOT = pathlib.Path(__file__).resolve().parents[1]
# every call that hands pyarrow a file to read or write Parquet; only urls.py may make them
PARQUET_IO = ("read_table(", "write_table(", "ParquetFile(", "ParquetWriter(", "pq.read_")


def _offenders(needles) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for folder in ("pipeline", "trainer", "tools", "api")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != ROOT / "pipeline/data/urls.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(needle in line for needle in needles)
    ]


def test_no_read_table_on_file_objects():
    """``pq.read_table(f)`` leaves a dataset thread that aborts the interpreter at exit in about
    one run in ten (apache/arrow#34314); ``pq.ParquetFile(f).read()`` does the same, more rarely,
    from the CPU pool's column-decoding tasks. No module but urls.py touches Parquet files."""
    assert _offenders(PARQUET_IO) == []


def test_pyarrow_only_sees_arrow_memory(tmp_path, monkeypatch):
    """What pyarrow parses from and writes to is an Arrow in-memory stream, never a Python file.

    Python ``bytes`` read from a Python file object end up in ``arrow::py::PyBuffer`` objects held
    by Arrow's worker threads; releasing one after shutdown has begun needs the GIL and calls
    ``std::terminate`` (backtrace: ThreadPool worker -> DecodeRowGroups task ->
    ~SerializedPageReader -> ~BufferReader -> ~PyBuffer -> PyGILState_Ensure -> pthread_exit).
    """
    sources, sinks = [], []
    parquet_file, write_table = pq.ParquetFile, pq.write_table

    def recording_parquet_file(source, *args, **kwargs):
        sources.append(source)
        return parquet_file(source, *args, **kwargs)

    def recording_write_table(table, where, *args, **kwargs):
        sinks.append(where)
        return write_table(table, where, *args, **kwargs)

    monkeypatch.setattr(urls.pq, "ParquetFile", recording_parquet_file)
    monkeypatch.setattr(urls.pq, "write_table", recording_write_table)
    location = str(tmp_path / "t.parquet")
    urls.write_parquet(location, pa.table({"a": ["x", "y"]}))
    urls.read_parquet(location)
    assert [type(s) for s in sources] == [pa.BufferReader]
    assert [type(s) for s in sinks] == [pa.BufferOutputStream]


def test_read_parquet_reads_the_whole_table(tmp_path):
    table = pa.table({"a": [1, 2, 3]}, metadata={b"k": b"v"})
    pq.write_table(table, tmp_path / "t.parquet")
    back = urls.read_parquet(str(tmp_path / "t.parquet"))
    assert back.equals(table) and back.schema.metadata[b"k"] == b"v"


def test_write_parquet_round_trips_paths_and_fsspec_urls(tmp_path):
    """A local path, a ``file://`` URL and a non-local fsspec URL (``memory://``) alike; a table
    larger than one copy chunk arrives whole."""
    table = pa.table(
        {"row": pa.array(range(50_000), pa.int64()), "key": [f"k{i:08d}" for i in range(50_000)]},
        metadata={b"kdcache": b"{}"},
    )
    for location in (
        str(tmp_path / "a.parquet"),
        f"file://{tmp_path}/b.parquet",
        "memory://kdcache-test/c.parquet",
    ):
        urls.write_parquet(location, table)
        back = urls.read_parquet(location)
        assert back.equals(table) and back.schema.metadata == table.schema.metadata, location
    assert pq.read_table(tmp_path / "a.parquet").equals(table)  # an ordinary Parquet file


def test_read_parquet_copies_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(urls, "_COPY_CHUNK", 7)
    table = pa.table({"a": list(range(1000))})
    urls.write_parquet(str(tmp_path / "t.parquet"), table)
    assert urls.read_parquet(str(tmp_path / "t.parquet")).equals(table)
