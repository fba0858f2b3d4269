"""A reader with only zarr, numpy and the cache attrs (plus tarfile and PIL to open the
dataset's own PNGs) rebuilds a crop+flip view: the layout is self-describing."""

import json
import subprocess
import sys

import numpy as np
import torch

from kdcache.trainer.data import CachedTargets, TrainViews
from tests.conftest import PLAN

READER = r"""
import io, json, math, os, sys, tarfile
sys.modules["kdcache.pipeline"] = None  # importing kdcache's code would fail here
import numpy as np, zarr
from PIL import Image

cache, rows, view, size = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
group = zarr.open_group(cache, mode="r")
attrs = group.attrs.asdict()
plan, dataset = attrs["plan"], attrs["dataset"]
assert plan["params_layout"] == "kdcache-params/2"
column = {name: i for i, name in enumerate(plan["param_names"])}
manifest = dataset["manifest"]  # relative to the folder holding the cache, when both are local
if not os.path.isabs(manifest) and "://" not in manifest:
    manifest = os.path.join(os.path.dirname(os.path.abspath(cache)), manifest)
shards = os.path.join(os.path.dirname(manifest), "shards")
out = []
for row in rows:
    shard, position = divmod(row, dataset["shard_size"])
    with tarfile.open(os.path.join(shards, f"train-{shard:06d}.tar")) as tar:
        pngs = sorted((m for m in tar.getmembers() if m.name.endswith(".png")), key=lambda m: m.name)
        image = Image.open(io.BytesIO(tar.extractfile(pngs[position]).read()))
    p = group["params"][row, view]
    def box(height, width):
        # floor(fraction * size + 0.5), as attrs.plan.param_meaning describes the columns
        h = min(height, max(1, math.floor(p[column["crop_height"]] * height + 0.5)))
        w = min(width, max(1, math.floor(p[column["crop_width"]] * width + 0.5)))
        top = min(height - h, math.floor(p[column["crop_top"]] * height + 0.5))
        left = min(width - w, math.floor(p[column["crop_left"]] * width + 0.5))
        return top, left, h, w
    top, left, h, w = box(image.height, image.width)
    assert plan["renderer"] == "cpu/4"  # the guide's replay contract of renderer cpu/4 (PNGs: Pillow's decode)
    reduce = next((r for r in (8, 4, 2) if image.format == "JPEG" and min(h, w) // (2 * size) >= r), 1)
    if reduce > 1:  # a JPEG decoded at 1/reduce in the DCT domain, the same box on it (fractional)
        image.draft(image.mode, (image.width // reduce, image.height // reduce))
    image = image.convert("L")
    edges = (left / reduce, top / reduce, (left + w) / reduce, (top + h) / reduce)
    region = (math.floor(edges[0]), math.floor(edges[1]), math.ceil(edges[2]), math.ceil(edges[3]))
    fractional = tuple(e - region[i % 2] for i, e in enumerate(edges))
    crop = image.crop(region).resize((size, size), Image.Resampling.BILINEAR, box=fractional)
    pixels = np.asarray(crop) / 255.0
    if p[column["flip"]] >= 0.5:
        pixels = pixels[:, ::-1]
    out.append(pixels.tolist())
print(json.dumps(out))
"""


def test_a_reader_without_kdcache_rebuilds_crop_and_flip_views(data, cache):
    rows, view, size = [3, 150, 222, 301, 420, 449], 1, 32
    result = subprocess.run(
        [sys.executable, "-c", READER, cache, json.dumps(rows), str(view), str(size)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rebuilt = torch.tensor(json.loads(result.stdout), dtype=torch.float32)
    loader = TrainViews(data, CachedTargets(cache, data), resolution=size)
    loader.set_epoch(view)
    ours = {s["row"]: s["image"][0] for s in loader.iter_views(data.shards_of("train"))}
    expected = torch.stack([ours[r] for r in rows])
    flips = CachedTargets(cache, data).store.group["params"][rows, view, 4]
    assert 0 < flips.sum() < len(rows)  # both flipped and unflipped views are checked
    # Pillow's uint8 antialiased bilinear against torch's port of it: at most one level apart
    assert float((rebuilt - expected).abs().max()) <= 1 / 255 + 1e-6
    assert PLAN.views > view
    mirrored = rebuilt.flip(-1)
    assert float((mirrored - expected).abs().amax((1, 2)).min()) > 0.05  # the flip matters
    assert np.isfinite(rebuilt.numpy()).all()
