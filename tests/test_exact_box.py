"""Renderer cpu/4 renders the planned box itself at every JPEG reduction (1, 2, 4, 8): a
coordinate-ramp JPEG (red = column, green = row) is rendered and the view's edges are read back
from its pixels; cpu/3 snapped the box to the reduced grid (kept for its caches)."""

import io

import numpy as np
import pytest
from PIL import Image

from kdcache.pipeline.views import ViewPlan, ViewRenderer, source_image
from kdcache.pipeline.views.exact_box import box_view, reduction

SIDE = 256
BOXES = ((21, 37, 200, 203), (5, 44, 243, 188), (51, 3, 180, 250))  # top, left, h, w


@pytest.fixture(scope="module")
def ramp() -> bytes:
    """A JPEG whose red channel is the pixel's column and green its row (4:4:4, quality 100)."""
    x, y = np.meshgrid(np.arange(SIDE), np.arange(SIDE))
    pixels = np.stack([x, y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=100, subsampling=0)
    return buffer.getvalue()


def _edges(view: np.ndarray) -> tuple[float, float, float, float]:
    """(top, left, bottom, right) of the source region a ramp view shows, in source pixels:
    a line fitted to the interior pixels (a ramp's value is its pixel centre's coordinate - 0.5)
    and read at the view's outer edges."""
    size = view.shape[-1]
    inner = np.arange(2, size - 2)
    cols = np.polyfit(inner, view[0][2:-2, 2:-2].mean(axis=0), 1)
    rows = np.polyfit(inner, view[1][2:-2, 2:-2].mean(axis=1), 1)
    at = lambda fit, j: float(np.polyval(fit, j)) + 0.5  # noqa: E731
    return at(rows, -0.5), at(cols, -0.5), at(rows, size - 0.5), at(cols, size - 0.5)


def _tolerance(reduce: int) -> float:
    """Source pixels the read-back edges may miss by: the fit's rounding noise, and the decoder
    rounding each reduced pixel (a mean of r x r ramp pixels) to a level."""
    return 0.3 + 0.05 * reduce


def _planned(box) -> tuple[int, int, int, int]:
    top, left, h, w = box
    return top, left, top + h, left + w


@pytest.mark.parametrize("reduce", [1, 2, 4, 8])
def test_the_view_covers_the_planned_box_at_every_reduction(ramp, reduce):
    source = source_image(ramp, 3)
    for box in BOXES:
        view = box_view(source.exact_hwc(reduce), box, reduce, 16).numpy().astype(np.float64)
        edges = _edges(view)
        assert np.allclose(edges, _planned(box), atol=_tolerance(reduce)), (reduce, box, edges)


def _params(box) -> np.ndarray:
    top, left, h, w = box
    return np.array([[top / SIDE, left / SIDE, h / SIDE, w / SIDE, 0.0]], dtype=np.float32)


def test_the_renderer_picks_each_reduction_and_keeps_the_box_where_cpu3_snapped(ramp):
    box = BOXES[0]
    worst_cpu3 = 0.0
    for size, expected in ((12, 8), (25, 4), (50, 2), (64, 1)):
        assert reduction(True, *box[2:], size) == expected
        images = [source_image(ramp, 3)]
        view = ViewRenderer(ViewPlan(renderer="cpu/4")).render(images, _params(box), 0, size)
        assert list(images[0]._decoded) == [("cpu/4", expected)]  # decoded at that reduction
        edges = _edges(view.numpy() * 255.0)
        assert np.allclose(edges, _planned(box), atol=_tolerance(expected)), (size, edges)
        old = ViewRenderer(ViewPlan(renderer="cpu/3")).render(images, _params(box), 0, size)
        missed = np.subtract(_edges(old.numpy() * 255.0), _planned(box))
        worst_cpu3 = max(worst_cpu3, float(np.abs(missed).max()))
    assert worst_cpu3 > 1.5  # cpu/3's box moved with the reduced grid: the check sees it
