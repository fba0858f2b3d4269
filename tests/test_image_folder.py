"""``shard --source DIR`` on data as users have it: file names as keys, the file's bytes, a
class-balanced seeded order, every image mode decoded as RGB, bad files named or skipped;
evaluation the way timm does it; the default resolution not taken from image sizes."""

import hashlib
import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from kdcache.errors import ManifestError
from kdcache.pipeline.data import Manifest, write_shards
from kdcache.pipeline.teach import read_shard_images
from kdcache.pipeline.views import ViewPlan
from kdcache.tools.bench.photo_set import photo_jpegs
from kdcache.trainer.data import EvalViews, PlannedViews, default_resolution

MODES = ("RGB", "L", "RGBA", "CMYK", "P", "LA")
CLASSES = ("cat", "dog", "fox")
PER_CLASS = 12


def _save(image: Image.Image, mode: str) -> tuple[str, bytes]:
    """The image in ``mode``, as the format that mode is usually stored in."""
    image = image.convert(mode)
    buffer = io.BytesIO()
    ext = "jpg" if mode in ("RGB", "L", "CMYK") else "png"
    image.save(buffer, "JPEG" if ext == "jpg" else "PNG", quality=90)
    return ext, buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 12 ImageNet-shaped photos, written class by class in mixed modes; one name
    holds dots and a space, one sits in a sub-folder."""
    root = tmp_path_factory.mktemp("folder")
    photos = photo_jpegs(len(CLASSES) * PER_CLASS, seed=1)
    files = {}
    for index, data in enumerate(photos):
        name, number = CLASSES[index // PER_CLASS], index % PER_CLASS
        ext, encoded = _save(Image.open(io.BytesIO(data)), MODES[index % len(MODES)])
        stem = f"{name}.v2 copy {number}" if number == 0 else f"{name}_{number:02d}"
        relative = f"train/{name}/{'sub/' if number == 1 else ''}{stem}.{ext}"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(encoded)
        files[relative] = encoded
    return root, files


def test_shard_keeps_names_bytes_balance_and_decodes_every_mode_as_rgb(folder, tmp_path):
    root, files = folder
    manifest = write_shards(str(root), str(tmp_path / "data"), shard_size=6, splits=("train",),
                            progress=False)  # fmt: skip
    table = manifest.table.to_pydict()
    assert sorted(table["path"]) == sorted(files)
    for key, path, sha1 in zip(table["key"], table["path"], table["sha1"], strict=True):
        assert sha1 == hashlib.sha1(files[path]).hexdigest()  # the file's own bytes
        if " " not in path:
            assert key == path.rsplit(".", 1)[0]  # the relative path is the key
        else:
            folder, name = path.rsplit("/", 1)
            stem = name.rsplit(".", 1)[0].replace(".", "_").replace(" ", "_")
            assert key.startswith(f"{folder}/{stem}_") and len(key) == len(folder) + len(stem) + 10
    assert manifest.channels == 3
    # the tar member holds the file as it is (a JPEG stays a JPEG)
    with tarfile.open(manifest.shard_url(manifest.shards[0])) as tar:
        member = next(m for m in tar.getmembers() if not m.name.endswith(".cls"))
        key = member.name.rsplit(".", 1)[0]
        path = table["path"][table["key"].index(key)]
        assert tar.extractfile(member).read() == files[path]
    # no shard holds more than 3x its fair share of a class (the files came class by class)
    for shard in manifest.shards:
        labels = manifest.labels[manifest.shard_rows(shard)]
        fair = shard.num_rows / len(CLASSES)
        assert np.bincount(labels, minlength=3).max() <= 3 * fair
    first = manifest.labels[manifest.shard_rows(manifest.shards[0])]
    assert len(set(first.tolist())) == 3  # not class by class
    # every mode (grey, RGB, RGBA, CMYK, palette, grey+alpha) decodes to 3 channels
    for shard in manifest.shards:
        for image in read_shard_images(manifest, shard):
            assert image.hwc().shape[-1] == 3
    # seeded: the same seed gives the same manifest, another seed another order
    again = write_shards(str(root), str(tmp_path / "again"), shard_size=6, splits=("train",),
                         progress=False)  # fmt: skip
    other = write_shards(str(root), str(tmp_path / "other"), shard_size=6, splits=("train",),
                         progress=False, shuffle_seed=1)  # fmt: skip
    assert again.fingerprint == manifest.fingerprint != other.fingerprint


def test_default_resolution_comes_from_the_model_not_the_image_sizes(folder, tmp_path):
    root, _ = folder
    manifest = write_shards(str(root), str(tmp_path / "data"), shard_size=12, splits=("train",),
                            progress=False)  # fmt: skip
    assert manifest.table["height"].to_numpy().max() > 224
    planned = PlannedViews(ViewPlan(), manifest)
    assert default_resolution(manifest, planned, "resnet18") == 224
    assert default_resolution(manifest, planned, "vit_base_patch16_384") == 384


def test_evaluation_resizes_the_shorter_side_and_crops_the_centre_as_timm(folder, tmp_path):
    root, files = folder
    manifest = write_shards(str(root), str(tmp_path / "data"), shard_size=12, splits=("train",),
                            progress=False)  # fmt: skip
    views = EvalViews(manifest, resolution=96, split="train", crop_pct=0.9,
                      interpolation="bicubic")  # fmt: skip
    transform = create_transform(96, interpolation="bicubic", crop_pct=0.9, mean=(0.0,) * 3,
                                 std=(1.0,) * 3)  # fmt: skip
    paths = [p for _, p in sorted(zip(manifest.table["row"].to_pylist(),
                                      manifest.table["path"].to_pylist(), strict=True))]  # fmt: skip
    for (image, _), path in zip(views, paths[:6], strict=False):
        expected = transform(Image.open(io.BytesIO(files[path])).convert("RGB"))
        assert image.shape == (3, 96, 96)
        torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)


def test_a_corrupt_file_is_named_or_skipped_and_a_fifo_does_not_hang(tmp_path):
    root = tmp_path / "bad"
    for seed, name in enumerate(("a", "b")):
        (root / "train" / name).mkdir(parents=True)
        for index, data in enumerate(photo_jpegs(3, seed=seed)):
            (root / "train" / name / f"{index}.jpg").write_bytes(data)
    good = (root / "train" / "a" / "0.jpg").read_bytes()
    (root / "train" / "a" / "broken.jpg").write_bytes(good[: len(good) // 3])
    os.mkfifo(root / "train" / "b" / "pipe.png")
    with pytest.raises(ManifestError, match=r"train/(a/broken\.jpg|b/pipe\.png): unreadable"):
        write_shards(str(root), str(tmp_path / "fail"), splits=("train",), progress=False)
    run = subprocess.run(
        [sys.executable, "-m", "kdcache", "shard", "--source", str(root), "--out",
         str(tmp_path / "skip"), "--splits", "train", "--on-bad-image", "skip", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "skipped 2 unreadable files" in run.stdout
    manifest = Manifest.read(str(tmp_path / "skip"))
    skipped = sorted(entry["path"] for entry in manifest.meta["skipped"])
    assert skipped == ["train/a/broken.jpg", "train/b/pipe.png"]
    assert len(manifest.table) == 6
