"""Teacher files from strangers: what a checkpoint declares is checked against what it holds
before anything is allocated; a cache's teacher set-up is compared whole when it is extended."""

import resource
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from conftest import PLAN

from kdcache.pipeline.cache import CacheMismatch, CacheStore
from kdcache.pipeline.teach import (
    ModelSpec,
    TeachConfig,
    TeacherSource,
    create_model,
    run_teach,
    save_checkpoint,
    teacher_identity,
)

GIB = 1 << 30


def run_limited(argv: list[str], limit: int = 4 * GIB) -> tuple[subprocess.CompletedProcess, int]:
    """``kdcache ARGV`` in a child process whose address space is capped at ``limit`` (so an
    unbounded allocation fails instead of taking the machine); returns the result and the
    child's peak resident memory in bytes."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = subprocess.run(
        [sys.executable, "-c", PEAK_OF_MAIN, *argv], capture_output=True, text=True, preexec_fn=cap
    )
    peak = int(result.stdout.rstrip().rsplit("peak-rss ", 1)[-1])
    return result, peak


# the child's own peak (ru_maxrss of children would carry the pytest worker's peak over fork)
PEAK_OF_MAIN = """
import sys
from kdcache.tools.cli.main import main
from kdcache.tools.bench.peak_memory import restart_peak, status
restart_peak()  # the peak starts again from the RSS after the imports
try:
    main(sys.argv[1:])
finally:
    print(f"peak-rss {status('VmHWM')}")
"""


def test_a_checkpoint_declaring_a_huge_model_is_refused_before_allocating(data, tmp_path):
    spec = ModelSpec("vit_tiny_patch16_224", data.num_classes, data.channels, 32, (0.5,), (0.5,),
                     model_args={"embed_dim": 16, "depth": 1, "num_heads": 1})  # fmt: skip
    path = tmp_path / "tiny.pth"
    save_checkpoint(str(path), create_model(spec), spec)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["kdcache"]["spec"]["model_args"]["embed_dim"] = 16384  # ~13 GB of weights
    torch.save(checkpoint, path)
    assert path.stat().st_size < 200_000

    argv = ["teach", "--data", data.location, "--cache", str(tmp_path / "c.zarr"), "--teacher",
            str(path), "--views", "1", "--quiet"]  # fmt: skip
    result, peak = run_limited(argv)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and "of another shape" in lines[0], lines[0]
    assert peak < GIB, peak
    assert not (tmp_path / "c.zarr").exists()


def test_a_cache_recording_a_key_map_is_not_extended_by_a_plain_teacher(data, tmp_path):
    """The cache's teacher set-up and the request's are compared both ways: a key map (or class
    map) recorded in the cache and left out of the request is a difference, refused before Ray
    starts and with nothing grown."""
    spec = ModelSpec("regnety_002", data.num_classes, data.channels, 28, data.pixel_mean,
                     data.pixel_std)  # fmt: skip
    checkpoint = str(tmp_path / "teacher.pth")
    save_checkpoint(checkpoint, create_model(spec), spec)
    location = str(tmp_path / "cache.zarr")
    mapped = TeacherSource(checkpoint, name="regnet", key_map="strip-prefix")
    config = TeachConfig(manifest=data.location, cache=location, teachers=[mapped], plan=PLAN)
    store = CacheStore.create(location, manifest=data, plan=PLAN, topk=4, splits=["train"])
    store.add_teacher(teacher_identity(mapped, data, config.resolved(store)))

    plain = TeacherSource(checkpoint, name="regnet")
    for views in (PLAN.views, PLAN.views + 1):  # a rerun, an extension
        asked = replace(config, teachers=[plain], plan=replace(PLAN, views=views))
        with pytest.raises(CacheMismatch, match="teacher.key_map: 'strip-prefix' in cache vs None"):
            run_teach(asked)
    assert CacheStore.open(location).plan.views == PLAN.views
