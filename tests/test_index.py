"""``kdcache index``: manifests over WebDataset tars and Parquet files that kdcache did not
write (plain ``tarfile``, pyarrow), used in place by teach, verify --replay and train."""

import hashlib
import io
import json
import os
import pathlib
import re
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kdcache.errors import ShardError
from kdcache.pipeline.data import Manifest, checked_samples, index_parquet, index_webdataset
from kdcache.pipeline.teach import ModelSpec, create_model, save_checkpoint
from kdcache.pipeline.views import ViewPlan
from kdcache.tools.bench.photo_set import photo_jpegs, write_wds_tars
from tests.conftest import teach

PLAN = ViewPlan(seed=11, views=2)


def _teacher(tmp_path, classes: int, resolution: int) -> str:
    spec = ModelSpec("resnet10t", classes, 3, resolution, (0.5,) * 3, (0.25,) * 3)
    checkpoint = str(tmp_path / "teacher.pth")
    save_checkpoint(checkpoint, create_model(spec), spec)
    return checkpoint


def _sha256(paths) -> list[str]:
    return [hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest() for p in paths]


def test_verify_replay_and_train_on_wds_tars_kdcache_did_not_write(tmp_path, ray_local, capsys):
    """Tars written with plain tarfile, keys with slashes and dots, ImageNet-shaped JPEGs, 1000
    classes: indexed by the CLI (brace range, glob, split patterns), taught at 224 px,
    ``verify --replay`` passes, a student trains; the tars are never rewritten."""
    from kdcache.tools.cli.main import main
    from kdcache.trainer.run import TrainConfig, train

    tars = write_wds_tars(str(tmp_path / "wds"), 10, per_tar=4, prefix="train")
    tars += write_wds_tars(str(tmp_path / "wds"), 4, per_tar=4, prefix="val", seed=3)
    before = _sha256(tars)
    wds = tmp_path / "wds"
    main(["index", f"{wds}/train-{{000000..000002}}.tar", f"{wds}/val-*.tar", "--out",
          str(tmp_path / "data"), "--split", "train=train-*", "--split", "test=val-*",
          "--num-classes", "1000", "--quiet"])  # fmt: skip
    assert "index: 4 files ({'train': 10, 'test': 4}), 1000 classes" in capsys.readouterr().out
    manifest = Manifest.read(str(tmp_path / "data"), allow_remote_shards=True)
    keys = manifest.table["key"].to_pylist()
    assert keys[0].startswith("n") and ".d/train_000000" in keys[0]  # slash and dot
    # outside the manifest's folder: recorded as absolute paths, read where they are
    assert [s.file for s in manifest.shards] == [os.path.abspath(t) for t in tars]
    assert [s.num_rows for s in manifest.shards] == [4, 4, 2, 4] and manifest.shard_size == 4
    # size and sha256 hashed while indexing cover the whole file (the tar's end blocks too)
    sizes = [os.path.getsize(t) for t in tars]
    assert [(s.bytes, s.sha256) for s in manifest.shards] == list(zip(sizes, before, strict=True))
    assert manifest.num_classes == 1000 and manifest.channels == 3
    jpegs = photo_jpegs(10)
    assert manifest.table["sha1"].to_pylist()[:10] == [hashlib.sha1(j).hexdigest() for j in jpegs]
    assert manifest.table["height"].to_pylist()[0] == Image.open(io.BytesIO(jpegs[0])).height

    cache = tmp_path / "cache.zarr"
    teach(
        manifest,
        _teacher(tmp_path, 1000, 224),
        cache,
        plan=PLAN,
        topk=3,
        batch_size=8,
        allow_remote_shards=True,
    )  # tars outside the manifest's folder: the user vouches
    capsys.readouterr()
    main(["verify", str(cache), "--replay", "--samples", "6", "--allow-remote-shards"])
    out = capsys.readouterr().out
    assert "verify: replay: 6 views rebuilt" in out and "teacher's input 0\n" in out
    result = train(TrainConfig(manifest=manifest.location, out=str(tmp_path / "run"),
                               cache=str(cache), model="resnet10t", kd="soft", resolution=32,
                               epochs=1, batch_size=4, workers=0, progress=False,
                               allow_remote_shards=True))  # fmt: skip
    assert result["test_acc"] >= 0 and result["train_kd"] > 0
    assert _sha256(tars) == before


def test_labels_from_a_json_field_and_tars_under_the_manifest(tmp_path):
    """``json:label`` reads the label from the JSON member (the tars have no cls); tars inside
    the manifest's folder are recorded relative to it; the readers check every sample."""
    folder = tmp_path / "wds"
    tars = write_wds_tars(str(folder), 5, per_tar=3, classes=7, members=("json", "jpg"))
    manifest = index_webdataset(str(folder / "*.tar"), str(folder), label_field="json:label",
                                progress=False)  # fmt: skip
    assert [s.file for s in manifest.shards] == ["train-000000.tar", "train-000001.tar"]
    assert manifest.label_field == "json:label" and manifest.num_classes == 7
    read = [s for shard in manifest.shards for s in checked_samples(manifest, shard)]
    assert [s["__key__"] for s in read] == manifest.table["key"].to_pylist()
    labels = manifest.labels[manifest.table["row"].to_numpy()]
    assert list(labels) == [json.loads(s["json"])["label"] for s in read]
    with pytest.raises(Exception, match="has no label 'cls'"):  # the default field
        index_webdataset(tars, str(tmp_path / "other"), progress=False)


def _refusal(tmp_path, capsys, files, *options) -> str:
    from kdcache.tools.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["index", *files, "--out", str(tmp_path / "data"), "--quiet", *options])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_one_line_refusals_name_tar_and_key(tmp_path, capsys):
    no_image = write_wds_tars(str(tmp_path / "a"), 2, per_tar=2, members=("cls", "json"))
    err = _refusal(tmp_path, capsys, no_image)
    assert f"{no_image[0]}: no image members (extensions jpg/jpeg/png/webp" in err
    err = _refusal(tmp_path, capsys, write_wds_tars(str(tmp_path / "e"), 2, per_tar=2),
                   "--image-ext", "png,webp")  # fmt: skip
    assert "no image members (extensions png/webp; the tar holds cls, jpg, json)" in err
    no_label = write_wds_tars(str(tmp_path / "b"), 2, per_tar=2, members=("jpg",))
    err = _refusal(tmp_path, capsys, no_label)
    assert f"{no_label[0]}: sample n" in err and "has no label 'cls'" in err
    err = _refusal(tmp_path, capsys, no_label, "--label-field", "json:label")
    assert "has no label 'json:label'" in err
    first = write_wds_tars(str(tmp_path / "c"), 2, per_tar=2)
    again = write_wds_tars(str(tmp_path / "d"), 2, per_tar=2)  # the same keys
    err = _refusal(tmp_path, capsys, [*first, *again])
    assert f"{again[0]}: duplicate key 'n" in err and f"(first in {first[0]})" in err
    err = _refusal(tmp_path, capsys, first, "--num-classes", "5")
    assert "classes (labels must be below the class count)" in err
    err = _refusal(tmp_path, capsys, [str(tmp_path / "c" / "x-{0..1}.tar")])
    assert "x-0.tar: no such file" in err


def _hf_parquet(path, jpegs, labels, row_group_size, first: int) -> None:
    """A Parquet file as Hugging Face publishes ImageNet: image struct{bytes, path}, label."""
    image = pa.array([{"bytes": j, "path": f"n{c:08d}_{i}.JPEG"} for i, (j, c) in
                      enumerate(zip(jpegs, labels, strict=True), first)],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))  # fmt: skip
    pq.write_table(pa.table({"image": image, "label": pa.array(labels, pa.int64())}), path,
                   row_group_size=row_group_size)  # fmt: skip


def test_parquet_in_hugging_face_layout_taught_and_replayed(tmp_path, ray_local, capsys):
    from kdcache.tools.cli.main import main

    jpegs = photo_jpegs(8, seed=4)
    folder = tmp_path / "hf" / "data"
    folder.mkdir(parents=True)
    _hf_parquet(folder / "train-00000-of-00002.parquet", jpegs[:3], [0, 2, 1], 2, 0)
    _hf_parquet(folder / "train-00001-of-00002.parquet", jpegs[3:6], [2, 1, 0], 2, 3)
    _hf_parquet(folder / "validation-00000-of-00001.parquet", jpegs[6:], [1, 2], 1, 6)
    manifest = index_parquet(str(folder / "*.parquet"), str(tmp_path / "hf"),
                             splits={"train": "train-*", "test": "validation-*"},
                             progress=False)  # fmt: skip
    assert manifest.shard_format == "parquet" and manifest.num_classes == 3
    assert [s.file for s in manifest.shards][0] == "data/train-00000-of-00002.parquet"
    assert manifest.table["key"].to_pylist()[:2] == ["n00000000_0", "n00000002_1"]
    assert manifest.table["sha1"].to_pylist() == [hashlib.sha1(j).hexdigest() for j in jpegs]
    with pytest.raises(ShardError, match=r"no column 'lbl' \(its columns: image, label\)"):
        index_parquet(str(folder / "*.parquet"), str(tmp_path / "x"), label_field="lbl")
    cache = tmp_path / "cache.zarr"
    teach(manifest, _teacher(tmp_path, 3, 64), cache, plan=PLAN, topk=2, batch_size=8)
    capsys.readouterr()
    main(["verify", str(cache), "--replay", "--samples", "4"])
    assert "verify: replay: 4 views rebuilt" in capsys.readouterr().out


def test_fsspec_urls_recorded_as_given_or_relative(tmp_path):
    """Tars behind an fsspec URL (``memory://``, in this process): a brace range over URLs, a
    manifest elsewhere records the URLs as given, one in the tars' folder records names."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for tar in write_wds_tars(str(tmp_path / "wds"), 5, per_tar=3):
        fs.pipe(f"/kdcache-index/{os.path.basename(tar)}", pathlib.Path(tar).read_bytes())
    urls = "memory://kdcache-index/train-{000000..000001}.tar"
    elsewhere = index_webdataset(urls, str(tmp_path / "data"), progress=False)
    assert [s.file for s in elsewhere.shards] == [
        "memory://kdcache-index/train-000000.tar",
        "memory://kdcache-index/train-000001.tar",
    ]
    inside = index_webdataset("memory://kdcache-index/*.tar", "memory://kdcache-index",
                              progress=False)  # fmt: skip
    assert [s.file for s in inside.shards] == ["train-000000.tar", "train-000001.tar"]
    for manifest in (elsewhere, inside):
        read = [s["__key__"] for shard in manifest.shards for s in checked_samples(manifest, shard)]
        assert read == manifest.table["key"].to_pylist()
    fs.rm("/kdcache-index", recursive=True)


def _read_with_tarfile_and_pillow(paths) -> list[tuple]:
    """(key, label, height, width, sha1) per sample as tarfile and Pillow read the tars."""
    samples: dict[str, dict] = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for info in tar:
                key, ext = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", info.name).groups()
                samples.setdefault(key, {})[ext] = tar.extractfile(info).read()
    rows = []
    for key, members in samples.items():
        image = members.get("jpg") or members["png"]
        with Image.open(io.BytesIO(image)) as opened:
            width, height = opened.size
        rows.append((key, int(members["cls"]), height, width, hashlib.sha1(image).hexdigest()))
    return rows


def test_the_manifest_holds_what_tarfile_and_pillow_read(tmp_path):
    """Real photos (JPEG, some grey) in a plain tarfile tar, PNGs with long keys in a pax tar:
    keys, labels, sizes and hashes as read by tarfile and Pillow."""
    tars = write_wds_tars(str(tmp_path / "photos"), 40, per_tar=20, members=("jpg", "cls"))
    pax = tmp_path / "photos" / "train-000002.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, mode in enumerate(["RGB", "L", "RGBA", "P"]):
            out = io.BytesIO()
            Image.new(mode, (30 + i, 17)).save(out, "PNG")
            key = f"{'long-folder-name/' * 8}png_{i}"
            for ext, data in (("png", out.getvalue()), ("cls", str(i).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    manifest = index_webdataset([*tars, str(pax)], str(tmp_path / "data"), progress=False)
    table = manifest.table.sort_by("row")
    found = list(zip(*(table[c].to_pylist() for c in ("key", "label", "height", "width", "sha1")),
                     strict=True))  # fmt: skip
    assert found == _read_with_tarfile_and_pillow([*tars, str(pax)])
