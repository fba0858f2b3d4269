"""At the real shape: ImageNet-shaped JPEGs (colour and grey, reduced decodes at the teacher's
64 px) through shard, teach (renderer cpu/4, the default, every operation) and
``verify --replay``."""

from PIL import Image

from kdcache.pipeline.cache import CacheStore
from kdcache.pipeline.data import open_source, write_shards
from kdcache.pipeline.teach import ModelSpec, create_model, read_shard_images, save_checkpoint
from kdcache.pipeline.views import ViewPlan
from kdcache.tools.bench.photo_set import photo_jpegs
from tests.conftest import teach

PLAN = ViewPlan(seed=7, views=2, crop_scale=(0.08, 1.0), randaugment="rand-m9-mstd0.5-inc1",
                color_jitter=(0.4, 0.4, 0.4, 0.1), erase_prob=0.5, mixup_alpha=0.8,
                cutmix_alpha=1.0)  # fmt: skip


def _photo_shards(tmp_path):
    """24 ImageNet-shaped JPEGs, colour and grey, in shards of 4."""
    for index, data in enumerate(photo_jpegs(24, seed=0)):
        folder = tmp_path / "photos" / "train" / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:03d}.jpg").write_bytes(data)
    modes = {Image.open(p).mode for p in (tmp_path / "photos").rglob("*.jpg")}
    assert modes == {"RGB", "L"}  # colour and grey JPEGs
    return write_shards(open_source(str(tmp_path / "photos")), str(tmp_path / "data"),
                        shard_size=4, splits=("train",), progress=False)  # fmt: skip


def test_a_shard_read_decoded_holds_the_renderers_decode_alone(tmp_path):
    manifest = _photo_shards(tmp_path)
    for renderer, decode in (
        ("cpu/4", ("cpu/4", 1)),
        ("cpu/3", ("cpu/3", 1)),
        ("cpu/2", 1),
        ("cpu/1", "pil"),
    ):
        for shard in manifest.shards_of("train"):
            images = read_shard_images(manifest, shard, renderer=renderer)
            # what the renderer's views are cut from, decoded once (verify and bench-teach's
            # raw batches read shards this way; they decoded a second time before)
            assert [list(image._decoded) for image in images] == [[decode]] * len(images)


def test_verify_replay_passes_on_a_jpeg_cache_of_the_new_renderer(tmp_path, ray_local, capsys):
    from kdcache.tools.cli.main import main

    manifest = _photo_shards(tmp_path)
    assert manifest.channels == 3
    spec = ModelSpec("resnet10t", manifest.num_classes, 3, 64, (0.5,) * 3, (0.25,) * 3)
    checkpoint = str(tmp_path / "teacher.pth")
    save_checkpoint(checkpoint, create_model(spec), spec)
    cache = tmp_path / "cache.zarr"
    teach(manifest, checkpoint, cache, plan=PLAN, topk=2)
    assert CacheStore.open(str(cache)).plan.renderer == "cpu/4"
    main(["verify", str(cache), "--replay", "--samples", "12"])
    out = capsys.readouterr().out
    assert "verify: replay: 12 views rebuilt" in out and "teacher's input 0\n" in out
