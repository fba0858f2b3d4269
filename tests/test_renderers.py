"""Renderers: versions in the plan and the cache, cpu/1 kept for caches made before versions,
cpu/2's and cpu/3's decode and reduced decode as the replay contract (docs/guide/views.md) says, batched = single
views, the teacher's normalised batches = the trainer's views normalised."""

import io
import math
import threading
from dataclasses import replace

import numpy as np
import pytest
import simplejpeg
import torch
import zarr
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from kdcache.pipeline.cache import CacheMismatch, CacheStore
from kdcache.pipeline.views import ViewPlan, ViewRenderer, decode_image, normalize, source_image
from kdcache.pipeline.views.plan import RENDERER_DECODERS
from kdcache.tools.bench.photo_set import photo_jpegs
from kdcache.trainer.data import CachedTargets
from tests.conftest import MIXED_PLAN, PLAN


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return photo_jpegs(16, seed=3)


def _params(plan: ViewPlan, encoded: list[bytes]) -> np.ndarray:
    aspect = [Image.open(io.BytesIO(e)).height / Image.open(io.BytesIO(e)).width for e in encoded]
    n = len(encoded)
    return plan.params(np.arange(n), np.array(aspect), shard_size=n, shard_rows=n)


def test_the_plan_names_its_renderer_and_old_attrs_mean_cpu1():
    assert ViewPlan().renderer == "cpu/4"
    assert ViewPlan(renderer="cpu").renderer == "cpu/4"
    assert ViewPlan(renderer="cuda").renderer == "device/1"
    assert ViewPlan(renderer="cpu/3").to_attrs()["decoder"] == f"simplejpeg " \
        f"{simplejpeg.__version__} (libjpeg-turbo; fastdct=False, fastupsample=True)"  # fmt: skip
    attrs = ViewPlan(renderer="cpu/3").to_attrs()
    assert "decoder" not in ViewPlan(renderer="cpu/2").to_attrs()  # cpu/2's attrs as before
    assert ViewPlan.from_attrs(ViewPlan(renderer="cpu/2").to_attrs()).renderer == "cpu/2"
    with pytest.raises(ValueError, match=r"plan.decoder: 'simplejpeg 0.1' made this cpu/3"):
        ViewPlan.from_attrs({**attrs, "decoder": "simplejpeg 0.1"})
    del attrs["renderer"], attrs["decoder"]  # a cache made before renderer versions
    assert ViewPlan.from_attrs(attrs).renderer == "cpu/1"
    with pytest.raises(ValueError, match=r"'cpu/9' is not a renderer .* renders with 'cpu/4'"):
        ViewPlan.from_attrs({**attrs, "renderer": "cpu/9"})
    default = ViewPlan().to_attrs()
    assert default["renderer"] == "cpu/4"
    assert default["decoder"] == f"simplejpeg {simplejpeg.__version__} (libjpeg-turbo; " \
        "fastdct=False, fastupsample=False)"  # fmt: skip
    with pytest.raises(ValueError, match=r"plan.decoder: .*fastupsample=True.* made this cpu/4"):
        ViewPlan.from_attrs({**default, "decoder": RENDERER_DECODERS["cpu/3"]})
    for name in ("cpu/5", "gpu", ""):
        with pytest.raises(ValueError, match=f"{name!r} is not a renderer of this kdcache"):
            ViewPlan(renderer=name)


def _store(tmp_path, data, renderer: str | None) -> str:
    location = str(tmp_path / "cache.zarr")
    CacheStore.create(location, manifest=data, plan=PLAN, topk=4, splits=["train"])
    group = zarr.open_group(location, mode="r+")
    plan = group.attrs["plan"]
    plan.pop("decoder")  # only cpu/3 and cpu/4 (the default) record their decoder
    if renderer is None:  # a cache from before renderer versions, so before identity hashes
        del plan["renderer"]
        group.attrs.pop("identity_sha256")
    else:
        plan["renderer"] = renderer
    group.attrs["plan"] = plan
    return location


def test_a_cache_of_an_unknown_renderer_is_refused_in_one_line(tmp_path, data, capsys):
    from kdcache.tools.cli.main import main

    location = _store(tmp_path, data, "cpu/9")
    with pytest.raises(CacheMismatch, match="cache.zarr: plan.renderer: 'cpu/9'"):
        CacheStore.open(location)
    with pytest.raises(SystemExit):
        main(["inspect", location])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'cpu/9'" in err and "'cpu/4'" in err


def test_a_cache_made_before_renderer_versions_replays_with_cpu1(tmp_path, data):
    location = _store(tmp_path, data, None)
    assert CacheStore.open(location).plan.renderer == "cpu/1"
    with pytest.raises(CacheMismatch, match=r"plan.renderer: 'cpu/1' in cache vs 'cpu/4'"):
        CachedTargets(location, data, plan={"renderer": "cpu"})


def _today(image: torch.Tensor, values: dict, size: int) -> torch.Tensor:
    """The renderer before versions, crop and flip (the code kdcache had): float, then resize."""
    height, width = image.shape[-2:]
    h = min(height, max(1, math.floor(values["crop_height"] * height + 0.5)))
    w = min(width, max(1, math.floor(values["crop_width"] * width + 0.5)))
    top = min(height - h, math.floor(values["crop_top"] * height + 0.5))
    left = min(width - w, math.floor(values["crop_left"] * width + 0.5))
    view = F.resized_crop(image.to(torch.float32) / 255.0, top, left, h, w, [size, size],
                          InterpolationMode.BILINEAR, antialias=True)  # fmt: skip
    return view.flip(-1) if values["flip"] >= 0.5 else view


def test_cpu1_is_todays_renderer_and_cpu2_stays_close_to_it(photos):
    plan = ViewPlan(seed=1, views=2, renderer="cpu/2")
    params = _params(plan, photos)[:, 1]
    old = ViewRenderer(ViewPlan(seed=1, views=2, renderer="cpu/1"))
    new = ViewRenderer(plan)
    images = [source_image(e, 3) for e in photos]
    for size, mean_levels, max_levels in ((224, 0.5, 1), (96, 10, 255)):
        gaps = []
        for position, encoded in enumerate(photos):
            expected = _today(decode_image(encoded, 3), old.values(params[position]), size)
            assert torch.equal(old.render(images, params, position, size), expected)
            gaps.append((new.render(images, params, position, size) - expected).abs() * 255)
        gaps = torch.stack(gaps)
        # at 224 px (no reduced decode from ~500x375): uint8 against float resampling, one
        # level at most; at 96 px big crops decode at 1/2 or 1/4: a filter of its own
        assert float(gaps.mean()) < mean_levels and float(gaps.amax()) <= max_levels + 1e-3
        assert float(gaps.amax()) > 0  # the renderers do differ: hence the version in the cache


def test_torchvision_decode_is_pillows_decode(photos):
    greys = 0
    for encoded in photos + [_grey_jpeg(photos[0])]:
        image = source_image(encoded, 3)
        greys += image.mode == "L"
        pillow = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))
        assert np.array_equal(image.hwc().numpy(), pillow)
    assert greys >= 1


def _grey_jpeg(encoded: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(encoded)).convert("L").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_big_crops_decode_reduced_as_pillows_draft(photos):
    plan = ViewPlan(seed=2, views=1, crop_scale=(0.5, 1.0), renderer="cpu/2")
    params = _params(plan, photos)[:, 0]
    renderer = ViewRenderer(plan)
    reductions = set()
    for position, encoded in enumerate(photos):
        image = source_image(encoded, 3)
        values = renderer.values(params[position])
        for size in (24, 56, 112, 224):
            view = renderer.render([image], params[position : position + 1], 0, size)
            top, left, h, w = _box(values, image.height, image.width)
            reduce = next((r for r in (8, 4, 2) if min(h, w) // size >= r), 1)
            reductions.add(reduce)
            pil = Image.open(io.BytesIO(encoded))
            if reduce > 1:
                pil.draft(pil.mode, (pil.width // reduce, pil.height // reduce))
                shape = (math.ceil(image.height / reduce), math.ceil(image.width / reduce))
                assert (pil.height, pil.width) == shape
                top, left, h, w = _box(values, *shape)
            crop = pil.convert("RGB").crop((left, top, left + w, top + h))
            rebuilt = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR)) / 255.0
            rebuilt = torch.from_numpy(rebuilt).permute(2, 0, 1).float()
            if values["flip"] >= 0.5:
                rebuilt = rebuilt.flip(-1)
            assert float((view - rebuilt).abs().max()) <= 1 / 255 + 1e-6
    assert {1, 2, 4} <= reductions


def _box(values: dict, height: int, width: int):
    h = min(height, max(1, math.floor(values["crop_height"] * height + 0.5)))
    w = min(width, max(1, math.floor(values["crop_width"] * width + 0.5)))
    top = min(height - h, math.floor(values["crop_top"] * height + 0.5))
    left = min(width - w, math.floor(values["crop_left"] * width + 0.5))
    return top, left, h, w


@pytest.mark.parametrize("renderer", ["cpu/1", "cpu/2", "cpu/3", "cpu/4"])
def test_a_batch_is_bitwise_its_views_rendered_alone(photos, renderer):
    plan = replace(MIXED_PLAN, renderer=renderer)
    params = _params(plan, photos)
    positions = list(range(len(photos)))
    shared, images = ViewRenderer(plan), [source_image(e, 3) for e in photos]
    for view, size in ((0, 64), (1, 64), (1, 40)):  # one renderer and shard for all: the
        # partner cache must tell views and sizes apart
        batch = shared.render_batch(images, params[:, view], positions, size)
        for position in positions:  # a fresh renderer and fresh decodes, as the trainer has
            alone = ViewRenderer(plan).render(
                [source_image(e, 3) for e in photos], params[:, view], position, size
            )
            assert torch.equal(batch[position], alone), (view, size, position)


def test_the_teacher_renders_ahead_and_gets_the_serial_targets(photos):
    from kdcache.pipeline.teach import ModelSpec, Teacher, create_model
    from kdcache.pipeline.teach.shard_targets import overlaps, teacher_targets

    spec = ModelSpec("resnet10t", 10, 3, 48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(0)
    teacher = Teacher("t", create_model(spec).eval(), spec, "0" * 64, "random")
    images = [source_image(e, 3) for e in photos]
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):  # 1 CPU: serial; 2: the next batch renders on the pool's threads
            torch.set_num_threads(count)
            assert overlaps(torch.device("cpu")) == (count == 2)
        torch.set_num_threads(2)  # the model's sums depend on its threads: the same for all
        for plan in (ViewPlan(seed=4, views=2, color_jitter=(0.4, 0.4, 0.4, 0.1)), MIXED_PLAN):
            params = _params(plan, photos)
            results = {}
            for pool in (0, 1, 3):  # serially in the caller; one render thread; three
                timings = {"augment": 0.0, "infer": 0.0}
                results[pool] = teacher_targets(
                    teacher, plan, images, params, topk=3, batch_size=5, timings=timings,
                    threads=pool,
                )  # fmt: skip
                assert timings["augment"] > 0 and timings["infer"] > 0
            for pool in (1, 3):
                for name, array in results[0].arrays().items():
                    assert np.array_equal(array, results[pool].arrays()[name]), (pool, name)
    finally:
        torch.set_num_threads(threads)


def test_render_threads_run_torch_alone_and_leave_the_callers_threads():
    # two render threads whose ops each started an OpenMP team of the caller's size would
    # oversubscribe the cores; the caller (the model) keeps its own count, here in a thread
    # that has not run a torch op yet, as an actor's may not have
    from kdcache.pipeline.teach.render_pool import RenderPool

    seen = {}

    def caller() -> None:
        torch.set_num_threads(2)
        with RenderPool(2, lambda: None) as pool:
            pool.each(lambda i: seen.setdefault(i, torch.get_num_threads()), [0, 1, 2, 3])
        seen["caller"] = torch.get_num_threads()
        later = threading.Thread(target=lambda: seen.setdefault("later", torch.get_num_threads()))
        later.start()
        later.join()

    threads = torch.get_num_threads()
    try:
        worker = threading.Thread(target=caller)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(threads)
    assert [seen[i] for i in range(4)] == [1, 1, 1, 1] and seen["caller"] == 2
    assert seen["later"] == 2  # a thread started after the pool gets torch's default back


def _cmyk_and_png(encoded: bytes) -> list[bytes]:
    out = []
    for mode, fmt in (("CMYK", "JPEG"), ("RGB", "PNG")):
        buffer = io.BytesIO()
        Image.open(io.BytesIO(encoded)).convert(mode).save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


def _contract_v3(encoded: bytes, values: dict, size: int) -> torch.Tensor:
    """cpu/3 by the replay contract, for a baseline JPEG: simplejpeg's decode (at 1/r for a
    big crop), the box, torch's uint8 antialiased bilinear resize, the flip, / 255."""
    height, width, _, _ = simplejpeg.decode_jpeg_header(encoded)
    top, left, h, w = _box(values, height, width)
    reduce = next((r for r in (8, 4, 2) if min(h, w) // size >= r), 1)
    shape = (math.ceil(height / reduce), math.ceil(width / reduce))
    pixels = simplejpeg.decode_jpeg(encoded, "RGB", fastdct=False, fastupsample=True,
                                    min_height=shape[0], min_width=shape[1])  # fmt: skip
    assert pixels.shape[:2] == shape
    top, left, h, w = _box(values, *shape)
    crop = torch.from_numpy(pixels)[top : top + h, left : left + w].permute(2, 0, 1)[None]
    if (h, w) != (size, size):
        crop = torch.nn.functional.interpolate(
            crop.contiguous(memory_format=torch.channels_last), size=(size, size),
            mode="bilinear", antialias=True,
        )  # fmt: skip
    view = crop[0].flip(-1) if values["flip"] >= 0.5 else crop[0]
    return view.float() / 255


def test_cpu3_decodes_jpegs_with_simplejpeg_and_the_rest_as_cpu2(photos):
    plan = ViewPlan(seed=2, views=1, crop_scale=(0.08, 1.0), renderer="cpu/3")
    params = _params(plan, photos)[:, 0]
    renderer, images = ViewRenderer(plan), [source_image(e, 3) for e in photos]
    reductions, gaps = set(), []
    for size in (56, 224):
        for position, encoded in enumerate(photos):
            values = renderer.values(params[position])
            view = renderer.render(images, params, position, size)
            assert torch.equal(view, _contract_v3(encoded, values, size)), (size, position)
            top, left, h, w = _box(values, images[position].height, images[position].width)
            reductions.add(next((r for r in (8, 4, 2) if min(h, w) // size >= r), 1))
            if size == 224:  # no reduced decode: only the chroma upsampling differs
                old = ViewRenderer(replace(plan, renderer="cpu/2"))
                gaps.append((view - old.render(images, params, position, size)).abs() * 255)
    assert {1, 2} <= reductions
    gaps = torch.stack(gaps)
    assert 0 < float(gaps.mean()) < 2  # another decode, so another renderer version
    others = _cmyk_and_png(photos[0])  # not baseline RGB/grey JPEGs: decoded by Pillow
    assert [source_image(e, 3).mode for e in others] == ["CMYK", "RGB"]
    params = _params(plan, others)[:, 0]
    for size in (56, 224):
        for position in range(len(others)):
            new, old = (
                ViewRenderer(replace(plan, renderer=name)).render(
                    [source_image(e, 3) for e in others], params, position, size)
                for name in ("cpu/3", "cpu/2")
            )  # fmt: skip
            assert torch.equal(new, old)


def _contract_v4(encoded: bytes, values: dict, size: int) -> torch.Tensor:
    """cpu/4 by the guide's contract: Pillow's decode (at 1/r when the box keeps 2 r output
    pixels per side), the planned box (fractional on the reduced image, Pillow's resize of the
    covering region; torch's uint8 antialiased resize at r = 1), the flip, / 255."""
    image = Image.open(io.BytesIO(encoded))
    top, left, h, w = _box(values, image.height, image.width)
    reduce = next((r for r in (8, 4, 2) if min(h, w) // (2 * size) >= r), 1)
    if reduce == 1:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
        crop = pixels[top : top + h, left : left + w].permute(2, 0, 1)[None]
        view = torch.nn.functional.interpolate(
            crop.contiguous(memory_format=torch.channels_last), size=(size, size),
            mode="bilinear", antialias=True,
        )[0]  # fmt: skip
    else:
        image.draft("RGB", (image.width // reduce, image.height // reduce))
        image = image.convert("RGB")
        box = [top / reduce, left / reduce, (top + h) / reduce, (left + w) / reduce]
        region = [math.floor(box[1]), math.floor(box[0]), math.ceil(box[3]), math.ceil(box[2])]
        fractional = (
            box[1] - region[0],
            box[0] - region[1],
            box[3] - region[0],
            box[2] - region[1],
        )
        resized = image.crop(region).resize((size, size), Image.Resampling.BILINEAR, box=fractional)
        view = torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)
    view = view.flip(-1) if values["flip"] >= 0.5 else view
    return view.float() / 255


def test_cpu4_renders_its_contract_at_full_and_reduced_decodes(photos):
    plan = ViewPlan(seed=2, views=1, crop_scale=(0.08, 1.0))
    assert plan.renderer == "cpu/4"
    params = _params(plan, photos)[:, 0]
    renderer, images = ViewRenderer(plan), [source_image(e, 3) for e in photos]
    reductions = set()
    for size in (56, 224):
        for position, encoded in enumerate(photos):
            values = renderer.values(params[position])
            view = renderer.render(images, params, position, size)
            assert torch.equal(view, _contract_v4(encoded, values, size)), (size, position)
            reductions |= {key[1] for key in images[position]._decoded}
    assert reductions == {1, 2}
    others = _cmyk_and_png(photos[0])  # not baseline RGB/grey JPEGs: decoded by Pillow
    params = _params(plan, others)[:, 0]
    for position, encoded in enumerate(others):
        view = renderer.render([source_image(e, 3) for e in others], params, position, 56)
        assert torch.equal(view, _contract_v4(encoded, renderer.values(params[position]), 56))


def test_cpu3_grey_jpegs_and_headers_match_pillow(photos):
    grey = _grey_jpeg(photos[0])
    for encoded in photos[:4] + [grey]:
        image, pil = source_image(encoded, 3), Image.open(io.BytesIO(encoded))
        assert (image.width, image.height, image.mode, image.format) == (
            *pil.size,
            pil.mode,
            "JPEG",
        )
    for channels in (3, 1):  # a grey JPEG decoded by simplejpeg is Pillow's, in 1 or 3 channels
        pixels = source_image(grey, channels).fast_hwc().numpy()
        pillow = np.asarray(Image.open(io.BytesIO(grey)).convert("RGB" if channels == 3 else "L"))
        assert np.array_equal(pixels, pillow if channels == 3 else pillow[:, :, None])
    colour = source_image(photos[0], 1)  # a colour JPEG to grey: Pillow's convert("L")
    assert np.array_equal(colour.fast_hwc()[:, :, 0].numpy(),
                          np.asarray(Image.open(io.BytesIO(photos[0])).convert("L")))  # fmt: skip


@pytest.mark.parametrize("plan", [ViewPlan(seed=5, views=2, crop_scale=(0.08, 1.0)), MIXED_PLAN],
                         ids=["crop+flip", "mixed"])  # fmt: skip
def test_default_teacher_batches_are_the_trainers_views_normalised(photos, plan):
    from kdcache.pipeline.teach import ModelSpec, batch_buffers, teacher_inputs

    assert plan.renderer == "cpu/4"
    params = _params(plan, photos)
    spec = ModelSpec("resnet10t", 10, 3, 48, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
    renderer, images = ViewRenderer(plan), [source_image(e, 3) for e in photos]
    for image in images:
        image.prepare(plan.renderer)  # the job's decode before its views
    buffers, batches = batch_buffers(2), []
    for index, (view, start) in enumerate([(0, 0), (0, 10), (1, 0), (1, 10)]):
        positions = range(start, min(start + 10, len(photos)))
        out = buffers(index, (len(positions), 3, 48, 48))
        batch = teacher_inputs(renderer, images, params[:, view], positions, spec, out=out)
        assert batch.data_ptr() == out.data_ptr()  # written into the job's buffer
        batches.append((view, positions, batch.clone()))
    for view, positions, batch in batches:  # the trainer: one view at a time, fresh decodes
        trainer = torch.stack([
            ViewRenderer(plan).render([source_image(e, 3) for e in photos], params[:, view], p, 48)
            for p in positions
        ])  # fmt: skip
        assert torch.equal(batch, normalize(trainer, spec.mean, spec.std))


def test_another_simplejpeg_is_refused_up_front_by_teach_and_train(data, teacher_path, tmp_path):
    """cpu/4's (the default's) pixels are simplejpeg 1.9.0's: with another version teach and train stop in one
    line before any work (not once per shard in every actor, or in the loader's workers)."""
    import os
    import shutil
    import subprocess
    import sys

    site = tmp_path / "site"
    copied = site / "simplejpeg"
    shutil.copytree(os.path.dirname(simplejpeg.__file__), copied)
    init = copied / "__init__.py"
    init.write_text(init.read_text().replace(f"'{simplejpeg.__version__}'", "'1.8.2'"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    probe = [sys.executable, "-c", "import simplejpeg; print(simplejpeg.__version__)"]
    assert subprocess.run(probe, capture_output=True, text=True, env=env).stdout.strip() == "1.8.2"
    cache, out = tmp_path / "cache.zarr", tmp_path / "student"
    commands = {
        "teach": ["teach", "--data", data.location, "--cache", str(cache), "--teacher",
                  teacher_path, "--views", "1", "--quiet"],
        "train": ["train", "--data", data.location, "--out", str(out), "--model", "resnet10t",
                  "--epochs", "1", "--quiet"],
    }  # fmt: skip
    for name, args in commands.items():
        run = subprocess.run([sys.executable, "-m", "kdcache", *args], capture_output=True,
                             text=True, env=env, timeout=300)  # fmt: skip
        lines = run.stderr.strip().splitlines()
        assert run.returncode != 0 and len(lines) == 1, (name, run.stderr)
        assert "renderer cpu/4 decodes with simplejpeg 1.9.0, found simplejpeg 1.8.2" in lines[0]
    assert not cache.exists() and not list(tmp_path.glob("cache.zarr*"))
