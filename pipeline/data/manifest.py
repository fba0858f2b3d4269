"""The dataset manifest (``manifest.parquet``): one row per sample, its shard, label and split.

Part of the contract between ``pipeline`` and ``trainer``. Row ids are laid out so that the
cache can give every shard whole chunks: row = shard * shard_size + position in the shard.
The fingerprint is a sha256 over every row's identity and content hash, the classes, the
shard layout and (format 2) every shard file's name, size and sha256; it is stored in the
Parquet metadata and re-checked on every read. Manifests of format 1 (no shard file sizes and
hashes) are still read, with their fingerprint as it was. Shard file names are checked
against the manifest's folder on every read (:mod:`pipeline.data.confine`).
"""

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from kdcache.errors import ManifestError
from kdcache.pipeline.data import urls
from kdcache.pipeline.data.confine import shard_location
from kdcache.pipeline.data.file_identity import file_identity
from kdcache.pipeline.data.tar_reader import IMAGE_EXTENSIONS, LABEL_FIELD

MANIFEST_FORMAT = "kdcache-manifest/2"
OLD_FORMATS = ("kdcache-manifest/1",)  # read, fingerprint without the shard files
METADATA_KEY = b"kdcache"
SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("key", pa.string()),
        ("shard", pa.int32()),
        ("label", pa.int32()),
        ("split", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("sha1", pa.string()),
    ]
)
# columns a manifest may have besides SCHEMA's: the source file of each sample (ImageFolder)
OPTIONAL_COLUMNS = {"path": pa.string()}


@dataclass(frozen=True)
class ShardInfo:
    """One shard: its id (index in the manifest), file (a tar, or an indexed Parquet file;
    relative to the manifest's folder, or as confined by :mod:`confine`), split, rows, and the
    file's size and sha256 (None in a format-1 manifest)."""

    id: int
    file: str
    split: str
    num_rows: int
    bytes: int | None = None
    sha256: str | None = None


def fingerprint(
    table: pa.Table, classes: list[str], shard_size: int, shards: list[ShardInfo] | None = None
) -> str:
    """sha256 of the manifest's identity: every row (id, key, shard, label, split, sha1),
    classes, layout and, given ``shards`` (format 2), each shard's file, size and sha256."""
    digest = hashlib.sha256()
    if shards is not None:
        digest.update(json.dumps([asdict(s) for s in shards], sort_keys=True).encode())
    digest.update(json.dumps({"classes": classes, "shard_size": shard_size}).encode())
    for name in ("row", "shard", "label"):
        digest.update(np.ascontiguousarray(table[name].to_numpy(), dtype="<i8").tobytes())
    for name in ("key", "split", "sha1"):
        digest.update("\n".join(table[name].to_pylist()).encode())
    return digest.hexdigest()


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

    ``pixel_mean`` and ``pixel_std`` are per-channel statistics of the train split on [0, 1];
    ``skipped`` lists source files left out as unreadable (``path``, ``error``); ``samples``
    says how a shard's samples hold image and label when not as kdcache writes them
    (``format``: webdataset or parquet, ``image_extensions``, ``label_field``: a manifest
    indexed over existing files). The shard files must be written already: their sizes and
    sha256 go into the fingerprint, as given in ``shards`` (hashed while written or read) or
    else read here.
    """
    shards = [s if s.sha256 is not None else
              ShardInfo(s.id, s.file, s.split, s.num_rows,
                        *file_identity(shard_location(location, s.file, allow_remote=True)))
              for s in shards]  # fmt: skip
    schema = pa.schema(
        [*SCHEMA, *(pa.field(k, t) for k, t in OPTIONAL_COLUMNS.items() if k in table.column_names)]
    )
    table = table.cast(schema)
    meta = {
        "format": MANIFEST_FORMAT,
        "dataset": dataset,
        "classes": classes,
        "channels": channels,
        "shard_size": shard_size,
        "shards": [asdict(s) for s in shards],
        "pixel_mean": pixel_mean,
        "pixel_std": pixel_std,
        "fingerprint": fingerprint(table, classes, shard_size, shards),
    }
    if skipped:
        meta["skipped"] = skipped
    if samples:
        meta["samples"] = samples
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    urls.write_parquet(location, table)
    return meta["fingerprint"]


class Manifest:
    """A read-only view of ``manifest.parquet`` with per-row arrays indexed by row id."""

    def __init__(
        self, location: str, table: pa.Table, meta: dict, *, allow_remote_shards: bool = False
    ):
        self.location = location
        self.table = table
        self.meta = meta
        self.classes: list[str] = meta["classes"]
        self.channels: int = meta["channels"]
        self.shard_size: int = meta["shard_size"]
        self.fingerprint: str = meta["fingerprint"]
        self.shards = [ShardInfo(**s) for s in meta["shards"]]
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

    @classmethod
    def read(cls, location: str, *, allow_remote_shards: bool = False) -> "Manifest":
        """Read and check a manifest; a folder means ``<folder>/manifest.parquet``. Shard
        files must lie in its folder; ``allow_remote_shards`` also takes URLs elsewhere."""
        if not location.endswith(".parquet"):
            location = urls.join(location, "manifest.parquet")
        if not urls.exists(location):
            raise FileNotFoundError(f"{location}: no manifest here (run `kdcache shard` first)")
        table = urls.read_parquet(location)
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise ValueError(f"{location}: Parquet file has no kdcache metadata")
        meta = json.loads(raw)
        if meta.get("format") not in (MANIFEST_FORMAT, *OLD_FORMATS):
            raise ManifestError(
                f"{location}: format is {meta.get('format')!r}, expected {MANIFEST_FORMAT!r}"
            )
        missing = set(SCHEMA.names) - set(table.column_names)
        if missing:
            raise ValueError(f"{location}: missing columns {sorted(missing)}")
        shards = None
        if meta["format"] == MANIFEST_FORMAT:
            shards = [ShardInfo(**s) for s in meta["shards"]]
        found = fingerprint(table, meta["classes"], meta["shard_size"], shards)
        if found != meta["fingerprint"]:
            raise ValueError(
                f"{location}: rows do not match the stored fingerprint "
                f"(stored {meta['fingerprint'][:12]}, computed {found[:12]}); the file was edited"
            )
        return cls(location, table, meta, allow_remote_shards=allow_remote_shards)

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
            raise ValueError(f"{self.location}: no split named {sorted(unknown)}")
        return [s for s in self.shards if s.split in wanted]

    def shard_rows(self, shard: ShardInfo) -> np.ndarray:
        """Row ids of a shard, in tar order."""
        start = shard.id * self.shard_size
        return np.arange(start, start + shard.num_rows)

    def shard_keys(self, shard: ShardInfo) -> list[str]:
        """Keys of a shard's samples, in tar order."""
        return self.shard_entries(shard)[0]

    def shard_entries(self, shard: ShardInfo) -> tuple[list[str], list[str]]:
        """Keys and image sha1s of a shard's samples, in tar order."""
        rows = self.table.filter(pa.compute.equal(self.table["shard"], shard.id)).sort_by("row")
        return rows["key"].to_pylist(), rows["sha1"].to_pylist()

    @cached_property
    def key_to_row(self) -> dict[str, int]:
        return dict(zip(self.table["key"].to_pylist(), self.table["row"].to_pylist(), strict=True))

    def _by_row(self, column: str, fill) -> np.ndarray:
        values = np.full(self.num_rows, fill, dtype=np.asarray(fill).dtype)
        values[self.table["row"].to_numpy()] = self.table[column].to_numpy()
        return values

    @cached_property
    def labels(self) -> np.ndarray:
        """Label per row id (-1 for unused ids)."""
        return self._by_row("label", np.int64(-1))

    @cached_property
    def aspect(self) -> np.ndarray:
        """Height / width of the source image per row id (1 for unused ids)."""
        return self._by_row("height", np.float64(1)) / self._by_row("width", np.float64(1))
