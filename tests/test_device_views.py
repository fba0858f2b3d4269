"""Renderer device/1: the tensor path on CPU tensors here (and on CUDA when there is one)
agrees with the CPU renderers within the documented tolerance."""

from dataclasses import replace

import pytest
import torch

from kdcache.pipeline.views import ViewRenderer, source_image
from kdcache.tools.bench.photo_set import photo_jpegs
from kdcache.tools.bench.replay_plans import CONFIGURATIONS
from tests.test_renderers import _params

PHOTOS = photo_jpegs(12, seed=5)


def _render(plan, renderer: str, size: int = 224, device: str = "cpu") -> torch.Tensor:
    plan = replace(plan, renderer=renderer)
    params = _params(plan, PHOTOS)[:, 0]
    images = [source_image(e, 3) for e in PHOTOS]
    views = ViewRenderer(plan, device=device).render_batch(images, params, range(len(PHOTOS)), size)
    return views.cpu()


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_device_views_on_cpu_are_cpu1s_arithmetic_and_close_to_cpu2(name):
    plan = CONFIGURATIONS[name]
    device = _render(plan, "device/1")
    assert device.shape == (len(PHOTOS), 3, 224, 224) and device.dtype == torch.float32
    # cropping before the float conversion changes nothing: cpu/1's pixels, bitwise
    assert torch.equal(device, _render(plan, "cpu/1"))
    levels = (device - _render(plan, "cpu/2")).abs() * 255
    if name == "crop + flip":  # float against uint8 resampling: rounding only
        assert float(levels.mean()) < 0.5 and float(levels.max()) <= 1 + 1e-3
    else:  # a level before RandAugment's thresholds and warps can move a pixel far
        assert float(levels.mean()) < 2.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_device_views_on_cuda_agree_with_cpu(name):
    plan = CONFIGURATIONS[name]
    levels = (_render(plan, "device/1", device="cuda") - _render(plan, "device/1")).abs() * 255
    # nvjpeg against libjpeg-turbo and CUDA's float arithmetic: a few levels
    assert float(levels.mean()) < (1.0 if name == "crop + flip" else 2.5)


def test_gpu_views_prints_views_per_second_on_cpu(tmp_path, capsys):
    import json

    from kdcache.tools.bench.gpu_views import main

    out = tmp_path / "gpu.json"
    main(["--device", "cpu", "--images", "4", "--views", "2", "--repeats", "1",
          "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "gpu-views: device/1 on cpu:" in printed and "views/s" in printed
    result = json.loads(out.read_text())
    assert result["modes"]["device/1"]["views_per_s"]["median"] > 0
    assert result["config"]["gpu_utilisation"] == "n/a (CPU)"
