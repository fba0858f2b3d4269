"""An open manifest holds neither its file's pages nor its footer's shard list in Arrow: what
it keeps does not grow with what is read from it, and its key-value footer is read once; a
whole ledger array is read in blocks of shards."""

import pyarrow.parquet as pq
import pytest
import zarr

from kdcache.errors import ManifestError
from kdcache.pipeline.cache import ledger
from kdcache.pipeline.data import Manifest, urls
from kdcache.pipeline.data.parquet_footer import without_key_values
from kdcache.tools.bench.inspect_scale import synthetic_manifest
from kdcache.tools.bench.target_reads import synthetic_cache


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Manifest:
    """140 shards of 1,000 rows: three row groups (two of 66 shards)."""
    return synthetic_manifest(str(tmp_path_factory.mktemp("m")), 140_000, 1000)


def _mapped(path: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith(path) for line in f)


def test_a_pass_over_every_shard_maps_none_of_the_file(manifest):
    """A memory map kept every page a pass touched resident (14.2 M rows: +100 MiB)."""
    for shard in manifest.shards:
        manifest.shard_labels(shard)
        manifest.shard_entries(shard)
    assert not _mapped(manifest.location)


def test_arrow_holds_the_footer_without_its_key_values(manifest):
    footer = manifest._rows.source.metadata
    assert not footer.metadata  # the shard list (twice) is not kept parsed
    assert "shards" not in manifest.meta and len(manifest.shards) == 140
    assert footer.num_row_groups == 3


def test_lean_footer_is_arrows_footer_but_for_its_key_values(manifest):
    lean, plain = (
        urls.ParquetSource(manifest.location, lean_footer=True),
        pq.ParquetFile(manifest.location),
    )
    found, written = lean.pop_key_values(), plain.metadata.metadata
    assert found == {k: v for k, v in written.items() if k != b"ARROW:schema"}
    assert lean.pop_key_values() == {}  # handed over once
    assert lean.metadata.to_dict() | {"serialized_size": 0} == plain.metadata.to_dict() | {
        "serialized_size": 0
    }
    for group in range(plain.num_row_groups):
        expected = plain.read_row_group(group).replace_schema_metadata(None)
        assert lean.row_group(group, expected.column_names).equals(expected)


def test_a_footer_that_is_not_thrift_is_refused(tmp_path):
    with pytest.raises(ManifestError, match="footer cannot be read"):
        without_key_values(memoryview(b"\x19\xfc\xff\xff\xff\x0f"), "m.parquet")
    path = tmp_path / "manifest.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 20)
    with pytest.raises(ManifestError, match="not a Parquet file"):
        Manifest.read(str(path))


def _varint(value: int) -> bytes:
    out = b""
    while value >= 0x80:
        out, value = out + bytes([value & 0x7F | 0x80]), value >> 7
    return out + bytes([value])


@pytest.mark.parametrize(
    "footer",
    [
        b"\x1c" * 5000 + b"\x00" * 5001,  # structs nested 5,000 deep: no recursion error
        b"\x19\xf1" + _varint(1 << 40) + b"\x01" * 8,  # 2^40 bools declared in 8 bytes
        b"\x1b" + _varint(1 << 40) + b"\x11" + b"\x01" * 8,  # a map of 2^40 bool pairs
    ],
    ids=["deep", "long-list", "long-map"],
)
def test_a_hostile_footer_is_refused_at_once(footer):
    """A few bytes of footer cannot make the walker recurse without bound or loop over
    counts its bytes cannot hold."""
    with pytest.raises(ManifestError, match="footer cannot be read"):
        without_key_values(memoryview(footer), "m.parquet")


def test_a_ledger_read_by_blocks_is_the_whole_array(tmp_path, monkeypatch):
    """A whole ledger array is read a block of shard rows at a time (one call over every
    storage object made zarr hold work for all of them); what it gives is the array."""
    manifest = synthetic_manifest(str(tmp_path / "m"), 50, 10)  # 5 shards
    store = synthetic_cache(str(tmp_path / "c.zarr"), manifest, 2, 3, "fp16")
    monkeypatch.setattr(ledger, "BLOCK", 2)
    arrays = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["teachers/t"]
    assert (store.shard_checksums("t") == arrays["shard_checksum"][:]).all()
    assert store.views_done("t").all() and store.views_done("t").shape == (5, 2)
