"""A teach actor's memory is bounded by decoded pixels, not rows: a shard of 250 huge images
(small on disk) peaks within 1.5x of a shard of 250 ImageNet-sized ones."""

import hashlib
import io
import pathlib
import re
import subprocess
import sys
import tarfile

import pyarrow as pa
from PIL import Image

from kdcache.pipeline.data import ShardInfo
from kdcache.pipeline.data.manifest import write_manifest
from kdcache.pipeline.teach import ModelSpec, create_model, save_checkpoint

ROWS = 250


def _png(width: int, height: int, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def _one_shard(root: pathlib.Path, image: bytes, side: tuple[int, int]) -> str:
    """``root``: one train shard of ROWS copies of ``image`` (two classes, grey) and its
    manifest, as a producer would hand them over."""
    (root / "shards").mkdir(parents=True)
    keys = [f"img/{i:04d}" for i in range(ROWS)]
    labels = [i % 2 for i in range(ROWS)]
    with tarfile.open(root / "shards/train-000000.tar", "w") as tar:
        for key, label in zip(keys, labels, strict=True):
            for name, data in ((f"{key}.png", image), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    table = pa.table({"row": list(range(ROWS)), "key": keys, "shard": [0] * ROWS,
                      "label": labels, "split": ["train"] * ROWS, "height": [side[1]] * ROWS,
                      "width": [side[0]] * ROWS,
                      "sha1": [hashlib.sha1(image).hexdigest()] * ROWS})  # fmt: skip
    write_manifest(str(root / "manifest.parquet"), table, dataset=root.name, classes=["a", "b"],
                   channels=1, shard_size=ROWS, shards=[ShardInfo(0, "shards/train-000000.tar",
                   "train", ROWS)], pixel_mean=[0.5], pixel_std=[0.25])  # fmt: skip
    return str(root)


def _peak_worker_mib(data: str, teacher: str, cache: pathlib.Path) -> int:
    """Teach the shard in a ``kdcache teach`` process with its own local Ray; the actor's
    peak resident memory it reports."""
    command = [sys.executable, "-m", "kdcache", "teach", "--data", data, "--cache", str(cache),
               "--teacher", teacher, "--views", "1", "--topk", "2", "--workers", "1", "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    return int(re.search(r"peak worker memory (\d+) MiB", result.stdout)[1])


def test_huge_images_peak_like_small_ones(tmp_path):
    spec = ModelSpec("regnety_002", 2, 1, 28, (0.5,), (0.25,))
    teacher = str(tmp_path / "teacher.pth")
    save_checkpoint(teacher, create_model(spec), spec)
    small = _one_shard(tmp_path / "small", _png(500, 375, "L"), (500, 375))
    huge = _one_shard(tmp_path / "huge", _png(7000, 7000, "1"), (7000, 7000))
    assert sum(p.stat().st_size for p in (tmp_path / "huge").rglob("*.tar")) < 20 << 20
    small_peak = _peak_worker_mib(small, teacher, tmp_path / "small.zarr")
    huge_peak = _peak_worker_mib(huge, teacher, tmp_path / "huge.zarr")
    print(f"peak worker memory: {small_peak} MiB (500x375), {huge_peak} MiB (7000x7000)")
    assert huge_peak < 1.5 * small_peak, (small_peak, huge_peak)
