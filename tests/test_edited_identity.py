"""Edited identity: a manifest with any fingerprinted column or field edited, and a
cache with any identity-bearing attribute edited, are refused when read, naming what was
edited. Each edit is plausible (a value of the right type that the reader's other checks
accept: two rows' values swapped, a number moved, a hash changed, a plan field changed with the
fields derived from it), so only the fingerprint or the identity hash can catch it; only the
fields a cache reader validates itself (a plan's ``params_layout``, ``param_names`` and
``decoder``) are refused by that check first. The lists come from the code and the files themselves, so a
column or attribute added later must be classified here, and one dropped from the fingerprint
or the identity hash fails its case."""

import json
import pathlib
import re
import shutil
from dataclasses import fields, replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kdcache
from kdcache.errors import KdcacheError
from kdcache.pipeline.data import Manifest, ShardInfo
from kdcache.pipeline.data.manifest import METADATA_KEY, OPTIONAL_COLUMNS, SCHEMA

# manifest columns and metadata fields outside the fingerprint: the source image's size (the
# image itself is covered by its sha1), descriptions and statistics, how samples are read
UNFINGERPRINTED_COLUMNS = {"height", "width", *OPTIONAL_COLUMNS}
UNFINGERPRINTED_META = {"dataset", "channels", "pixel_mean", "pixel_std", "skipped", "samples"}
FINGERPRINTED_COLUMNS = [name for name in SCHEMA.names if name not in UNFINGERPRINTED_COLUMNS]
FINGERPRINTED_META = ["classes", "shard_size", *(f"shards.{f.name}" for f in fields(ShardInfo))]


def _copy_manifest(data, folder: pathlib.Path) -> pathlib.Path:
    """A copy of the data's manifest (shards alongside) to edit."""
    shutil.copytree(pathlib.Path(data.location).parent, folder)
    return folder / "manifest.parquet"


def _swapped(values: list, first: int = 0) -> list:
    """``values`` with the one at ``first`` swapped with the next one that differs from it."""
    other = next(i for i, value in enumerate(values) if value != values[first])
    values = list(values)
    values[first], values[other] = values[other], values[first]
    return values


@pytest.mark.parametrize("column", FINGERPRINTED_COLUMNS)
def test_a_manifest_with_an_edited_column_is_refused(data, tmp_path, column):
    location = _copy_manifest(data, tmp_path / "data")
    table = pq.read_table(location)
    values = pa.array(_swapped(table[column].to_pylist()), table.schema.field(column).type)
    edited = table.set_column(table.column_names.index(column), column, values)
    pq.write_table(edited.replace_schema_metadata(table.schema.metadata), location)
    with pytest.raises(ValueError, match=re.escape(f"{location}: ") + ".*fingerprint"):
        Manifest.read(str(location))


def _edit_meta(meta: dict, field: str) -> None:
    """Edit one fingerprinted metadata field in place (a shard field: swapped between the first
    shard and the next whose value differs)."""
    if field == "classes":
        meta["classes"] = _swapped(meta["classes"])
    elif field == "shard_size":
        meta["shard_size"] += 1
    else:
        name = field.removeprefix("shards.")
        swapped = _swapped([shard[name] for shard in meta["shards"]])
        for shard, value in zip(meta["shards"], swapped, strict=True):
            shard[name] = value


@pytest.mark.parametrize("field", FINGERPRINTED_META)
def test_a_manifest_with_an_edited_fingerprinted_field_is_refused(data, tmp_path, field):
    location = _copy_manifest(data, tmp_path / "data")
    table = pq.read_table(location)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    _edit_meta(meta, field)
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta)}), location)
    with pytest.raises(ValueError, match=re.escape(f"{location}: ") + ".*fingerprint"):
        Manifest.read(str(location))


def test_every_manifest_column_and_field_is_classified(data):
    """A column or metadata field added to the manifest must join the fingerprint (and its
    case above) or be listed here as outside it."""
    table = pq.read_table(data.location)
    assert set(table.column_names) <= {*FINGERPRINTED_COLUMNS, *UNFINGERPRINTED_COLUMNS}
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    classified = {"format", "fingerprint", *UNFINGERPRINTED_META}
    assert set(meta) <= classified | {field.split(".")[0] for field in FINGERPRINTED_META}


# -- the cache ----------------------------------------------------------------------------------
# attributes outside the identity hash: where the manifest and a teacher's checkpoint are (caches
# and data move), which kdcache wrote the cache and when, and the hash itself
UNCOVERED_ATTRS = {"tool_version", "created", "identity_sha256"}
UNCOVERED_LEAVES = {("dataset", "manifest"), ("source",)}
IDENTITY_ATTRS = ["format", "dataset", "splits", "plan", "topk", "samples", "sampling", "layout"]
PLAN_FIELDS = {f.name for f in fields(kdcache.ViewPlan)}
# plausible values of text attributes (others get a suffix; hashes a changed digit)
OTHER_TEXT = {"kdcache/2": "kdcache/1", "cpu/3": "cpu/2", "cpu/4": "cpu/3", "const": "pixel", "fp16": "q8",
              "": "rand-m9-mstd0.5", "bilinear-antialias": "bicubic"}  # fmt: skip


def _leaves(value, path: tuple = ()) -> list[tuple]:
    """Paths to every leaf of a JSON value (lists are leaves; an empty dict is one)."""
    if isinstance(value, dict) and value:
        return [leaf for key, item in value.items() for leaf in _leaves(item, (*path, key))]
    return [path]


def _other(value):
    """A plausible different value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 + 0.01
    if isinstance(value, str):
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
            return value[:-1] + ("0" if value[-1] != "0" else "1")
        return OTHER_TEXT.get(value, value + "-edited")
    if isinstance(value, list):
        return [_other(value[0]), *value[1:]] if value else [0]
    if isinstance(value, dict):
        return {"drop_rate": 0.1}  # an empty one (model_args)
    return 1  # None


def _edited(attrs: dict, path: tuple) -> dict:
    """A deep copy of ``attrs`` with the leaf at ``path`` changed. A plan field is changed
    through the plan, so that the fields derived from it (parameter names, operations, decoder)
    agree, as a careful editor would leave them."""
    attrs = json.loads(json.dumps(attrs))
    if path[0] == "plan" and path[1] in PLAN_FIELDS:
        plan = kdcache.ViewPlan.from_attrs(attrs["plan"])
        value = getattr(plan, path[1])
        other = tuple(_other(list(value))) if isinstance(value, tuple) else _other(value)
        return {**attrs, "plan": replace(plan, **{path[1]: other}).to_attrs()}
    *parents, key = path
    holder = attrs
    for parent in parents:
        holder = holder[parent]
    holder[key] = _other(holder[key])
    return attrs


def _unrefused(cache: pathlib.Path, node: str, paths: list[tuple]) -> list[str]:
    """Which of ``paths`` (leaves of the attributes in ``node``'s zarr.json: the group's, or a
    teacher's), each edited alone, the cache still opens with, or is refused for without
    naming the cache and the edited attribute (a teacher's: ``teachers/NAME``)."""
    document = cache / node / "zarr.json"
    original = document.read_text()
    meta = json.loads(original)
    missed = []
    for path in paths:
        document.write_text(json.dumps({**meta, "attributes": _edited(meta["attributes"], path)}))
        leaf = ".".join(map(str, path))
        try:
            kdcache.open_cache(str(cache))
            missed.append(f"{leaf}: opened")
        except KdcacheError as error:
            if str(cache) not in str(error) or (node or path[0]) not in str(error):
                missed.append(f"{leaf}: {error}")
        finally:
            document.write_text(original)
    return missed


def _copy_cache(cache: str, folder: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """A copy of ``cache`` to edit, and its group attributes."""
    shutil.copytree(cache, folder)
    return folder, json.loads((folder / "zarr.json").read_text())["attributes"]


@pytest.mark.parametrize("attribute", IDENTITY_ATTRS)
def test_a_cache_with_an_edited_identity_attribute_is_refused(sampled_cache, tmp_path, attribute):
    """Every leaf of the attribute (each plan field, each dataset field, ...), edited alone."""
    cache, attrs = _copy_cache(sampled_cache, tmp_path / "cache.zarr")
    paths = [p for p in _leaves(attrs[attribute], (attribute,)) if p not in UNCOVERED_LEAVES]
    assert _unrefused(cache, "", paths) == []


def test_a_cache_with_an_edited_teacher_identity_is_refused(sampled_cache, tmp_path):
    """Every leaf of a teacher's identity (architecture, weights hash, preprocessing, ...)."""
    cache, _ = _copy_cache(sampled_cache, tmp_path / "cache.zarr")
    node = "teachers/regnet28"
    identity = json.loads((cache / node / "zarr.json").read_text())["attributes"]
    paths = [p for p in _leaves(identity) if p not in UNCOVERED_LEAVES]
    assert len(paths) > 5 and _unrefused(cache, node, paths) == []


def test_every_cache_attribute_is_classified_and_locations_may_change(sampled_cache, tmp_path):
    """An attribute added to the cache must join the identity hash (and its case above) or be
    listed here as outside it; those outside it (locations, provenance) may change freely: a
    moved cache or teacher checkpoint still opens."""
    cache, attrs = _copy_cache(sampled_cache, tmp_path / "cache.zarr")
    assert set(attrs) <= {*IDENTITY_ATTRS, *UNCOVERED_ATTRS}
    group = json.loads((cache / "zarr.json").read_text())
    for path in [("dataset", "manifest"), ("tool_version",), ("created",)]:
        group["attributes"] = _edited(group["attributes"], path)
    (cache / "zarr.json").write_text(json.dumps(group))
    teacher = json.loads((cache / "teachers/regnet28/zarr.json").read_text())
    teacher["attributes"]["source"] = "/elsewhere/teacher.pth"
    (cache / "teachers/regnet28/zarr.json").write_text(json.dumps(teacher))
    assert kdcache.open_cache(str(cache)).teachers == ["regnet", "regnet28"]
