"""The cache catalogue: one Parquet row per (cache, teacher) under a root folder or URL.

``ROOT/catalog/<identity>.parquet`` files together form one table that pandas, pyarrow or
duckdb read as a dataset (``pd.read_parquet("ROOT/catalog")``,
``duckdb.sql("select * from 'ROOT/catalog/*.parquet'")``). A row's identity is a sha256 of
what makes targets reusable: dataset fingerprint, plan (all but the number of views, which a
cache can grow), K, sampled draws per view (when there are any), splits, and the teacher's
architecture, weights and preprocessing. Several caches may hold targets of one identity (one
complete, another with more views being added; or a teacher under two names): each (identity,
cache, teacher name) has its own file, written whole, so entries never overwrite each other
and concurrent writers never clash.
"""

import datetime
import hashlib
import json
import os

import pyarrow as pa

from kdcache.errors import CacheNotFound, ConfigError
from kdcache.pipeline.cache.store import CacheStore
from kdcache.pipeline.data import Manifest, catalogued_cache, storage, urls

CATALOG_ENV = "KDCACHE_CATALOG"
_TEACHER_KEYS = ("arch", "weights_sha256", "num_classes", "model_args", "preprocessing")
SCHEMA = pa.schema(
    [
        ("identity", pa.string()),
        ("cache", pa.string()),
        ("teacher", pa.string()),
        ("arch", pa.string()),
        ("weights_sha256", pa.string()),
        ("dataset", pa.string()),
        ("fingerprint", pa.string()),
        ("plan_seed", pa.int64()),
        ("views", pa.int64()),
        ("operations", pa.string()),
        ("plan", pa.string()),
        ("topk", pa.int64()),
        ("format", pa.string()),
        ("target_dtype", pa.string()),
        ("splits", pa.string()),
        ("complete", pa.bool_()),
        ("shards_done", pa.int64()),
        ("shards_total", pa.int64()),
        ("bytes", pa.int64()),
        ("created", pa.string()),
        ("updated", pa.string()),
        ("tool_version", pa.string()),
    ]
)


_BEFORE_FORMAT_2 = {"format": "kdcache/1", "target_dtype": "fp16"}  # rows recorded before


def catalog_root(explicit: str | None) -> str | None:
    """``--catalog`` if given, else ``$KDCACHE_CATALOG``, else None."""
    return explicit or os.environ.get(CATALOG_ENV) or None


def identity_key(cache_attrs: dict, teacher: dict) -> str:
    """sha256 of the identity of one teacher's targets in a cache (views excluded)."""
    identity = {
        "fingerprint": cache_attrs["dataset"]["fingerprint"],
        "plan": {k: v for k, v in cache_attrs["plan"].items() if k != "views"},
        "topk": cache_attrs["topk"],
        "splits": sorted(cache_attrs["splits"]),
        "teacher": {k: teacher[k] for k in _TEACHER_KEYS},
    }
    if cache_attrs.get("samples"):  # only then: caches without samples keep their identity
        identity["samples"] = cache_attrs["samples"]
    target_dtype = cache_attrs.get("layout", {}).get("target_dtype", "fp16")
    if target_dtype != "fp16":  # only then, likewise: quantised targets are other targets
        identity["target_dtype"] = target_dtype
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class Catalog:
    """A catalogue root: record caches, list them, find the one that fits."""

    def __init__(self, root: str):
        self.root = root
        self.folder = urls.join(root, "catalog")
        self._files: dict[tuple, str] = {}  # (identity, cache, teacher) -> the file read

    def default_cache_location(self, teachers: list[tuple[str, str]]) -> str:
        """Where ``kdcache teach`` puts a cache of ``teachers`` ((identity, name) pairs) when
        only the catalogue is given."""
        digest = hashlib.sha256(json.dumps(sorted(teachers)).encode()).hexdigest()
        return urls.join(self.root, f"caches/{digest[:16]}.zarr")

    def record(self, store: CacheStore, manifest: Manifest) -> list[dict]:
        """Write (or refresh) one row per teacher of ``store``; return the rows."""
        fs, folder = storage.filesystem(self.folder)
        fs.makedirs(folder, exist_ok=True)
        location = urls.resolved(store.location)
        stored_bytes = urls.disk_bytes(location)
        split_shards = [s.id for s in manifest.shards_of(store.attrs["splits"])]
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        rows = []
        for name in store.teacher_names:
            teacher = store.teacher_identity(name)
            done = store.shard_done(name)[split_shards]
            key = identity_key(store.attrs, teacher)
            plan = store.attrs["plan"]
            row = {
                "identity": key,
                "cache": location,
                "teacher": name,
                "arch": teacher["arch"],
                "weights_sha256": teacher["weights_sha256"],
                "dataset": store.attrs["dataset"]["name"],
                "fingerprint": store.attrs["dataset"]["fingerprint"],
                "plan_seed": plan["seed"],
                "views": plan["views"],
                "operations": ",".join(plan["operations"]),
                "plan": json.dumps(plan, sort_keys=True),
                "topk": store.topk,
                "format": store.format,
                "target_dtype": store.target_dtype,
                "splits": ",".join(store.attrs["splits"]),
                "complete": bool(done.all()),
                "shards_done": int(done.sum()),
                "shards_total": len(split_shards),
                "bytes": stored_bytes,
                "created": store.attrs["created"],
                "updated": now,
                "tool_version": store.attrs["tool_version"],
            }
            self._write_row(fs, folder, row)
            rows.append(row)
        return rows

    def confined_cache(self, row: dict, *, writes: bool) -> str:
        """``row`` (one of :meth:`rows`)'s cache location, checked as
        :func:`~pipeline.data.confine.catalogued_cache` does (naming the entry's file and
        field): an edited row cannot make a run write elsewhere or fetch from a URL."""
        entry = self._files[(row["identity"], row["cache"], row["teacher"])]
        return catalogued_cache(self.root, row["cache"], entry, writes=writes)

    @staticmethod
    def _write_row(fs, folder: str, row: dict) -> None:
        """One entry's file, named by identity, cache and teacher name; written whole."""
        entry = f"{row['identity']}|{row['cache']}|{row['teacher']}"
        name = f"{row['identity'][:16]}-{hashlib.sha256(entry.encode()).hexdigest()[:16]}"
        temporary = urls.join(folder, f".{name}.parquet.tmp")
        urls.write_parquet(
            fs.unstrip_protocol(temporary), pa.Table.from_pylist([row], schema=SCHEMA)
        )
        fs.mv(temporary, urls.join(folder, f"{name}.parquet"))

    def _entries(self) -> list[tuple[str, dict]]:
        """(file, row) of every row in the catalogue's files."""
        fs, folder = storage.filesystem(self.folder)
        files = sorted(fs.glob(urls.join(folder, "*.parquet"))) if fs.exists(folder) else []
        entries = []
        for path in files:
            location = fs.unstrip_protocol(path)
            entries += [(location, row) for row in urls.read_parquet(location).to_pylist()]
        return entries

    def table(self) -> pa.Table:
        """Every row of the catalogue (an empty table if there is none yet)."""
        return pa.Table.from_pylist([row for _, row in self._entries()], schema=SCHEMA)

    def rows(self) -> list[dict]:
        """Every entry, the latest per (identity, cache, teacher) if a catalogue written by an
        older version (one file per identity) holds another."""
        latest: dict[tuple, dict] = {}
        for location, row in self._entries():
            row.update({k: v for k, v in _BEFORE_FORMAT_2.items() if row.get(k) is None})
            key = (row["identity"], row["cache"], row["teacher"])
            if key not in latest or row["updated"] > latest[key]["updated"]:
                latest[key] = row
                self._files[key] = location
        return list(latest.values())

    def caches_holding(self, teachers: list[tuple[str, str]]) -> dict[str, list[dict]]:
        """Every catalogued cache holding all of ``teachers`` ((identity, name) pairs): its
        location and its rows for them, in that order."""
        entries = {(r["cache"], r["identity"], r["teacher"]): r for r in self.rows()}
        found = {}
        for location in sorted({cache for cache, _, _ in entries}):
            rows = [entries.get((location, key, name)) for key, name in teachers]
            if all(rows):
                found[location] = rows
        return found

    def find(
        self,
        *,
        fingerprint: str | None = None,
        plan: dict | None = None,
        teacher: str | None = None,
        complete: bool = True,
    ) -> list[dict]:
        """Rows that fit: same dataset, every given plan field equal (``views``: at least as many),
        teacher name or architecture, and complete unless ``complete`` is False."""
        found = []
        for row in self.rows():
            stored_plan = json.loads(row["plan"])
            fits_plan = all(
                row["views"] >= value if field == "views" else _same(stored_plan.get(field), value)
                for field, value in (plan or {}).items()
            )
            if (
                (fingerprint is None or row["fingerprint"] == fingerprint)
                and fits_plan
                and (teacher is None or teacher in (row["teacher"], row["arch"]))
                and (row["complete"] or not complete)
            ):
                found.append(row)
        return found


def _same(stored, wanted) -> bool:
    if isinstance(stored, list) or isinstance(wanted, tuple | list):
        return list(stored or []) == list(wanted)
    return stored == wanted


def resolve_cache(
    root: str | None, fingerprint: str, plan: dict, teacher: str | None
) -> tuple[str, str]:
    """The one complete cache (and teacher) in the catalogue that fits, for ``--cache auto``."""
    if root is None:
        raise ConfigError(
            f"cache 'auto' needs a catalogue (its root, or ${CATALOG_ENV})", field="catalog"
        )
    catalog = Catalog(root)
    rows = catalog.find(fingerprint=fingerprint, plan=plan, teacher=teacher)
    wanted = f"dataset {fingerprint[:12]}, plan {plan or 'any'}, teacher {teacher or 'any'}"
    if not rows:
        partial = catalog.find(fingerprint=fingerprint, plan=plan, teacher=teacher, complete=False)
        hint = f"; {len(partial)} unfinished (rerun kdcache teach)" if partial else ""
        raise CacheNotFound(f"{root}: no complete cache for {wanted}{hint}")
    if len(rows) > 1:
        listed = ", ".join(
            f"{r['cache']} (teacher {r['teacher']}, seed {r['plan_seed']})" for r in rows
        )
        raise ConfigError(
            f"{root}: {len(rows)} caches fit {wanted}: {listed}; name the cache, or narrow "
            "by teacher name or plan options",
            field="cache",
        )
    return catalog.confined_cache(rows[0], writes=False), rows[0]["teacher"]
