"""What ``kdcache teach`` checks before work, and what it prints: options, class maps and the
cache's plan are refused before Ray starts or any teacher loads; written to a file or a pipe,
progress is one line per shard; a wrong option prints teach's own usage."""

import json
import resource
import subprocess
import sys
import time

import pytest
from conftest import PLAN, session_address

from kdcache.pipeline.cache import CacheStore
from kdcache.pipeline.teach import ModelSpec, create_model, save_checkpoint

CPU_SECONDS = 5.0  # the CPU a refusal may take (wall time on this shared machine varies)


def _kdcache(*argv, cwd=None) -> tuple[subprocess.CompletedProcess, float, float]:
    """``kdcache ARGV`` in a child process: the result, its wall seconds and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "kdcache", *map(str, argv)], cwd=cwd,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result, wall, cpu


def test_wrong_options_class_maps_and_plans_are_refused_before_ray_or_weights(data, tmp_path):
    cache = tmp_path / "cache.zarr"
    CacheStore.create(str(cache), manifest=data, plan=PLAN, topk=4, splits=["train"])
    wrong_map = tmp_path / "map.json"
    wrong_map.write_text(json.dumps([281, 967]))  # 2 ids, the data has 10 classes
    # a teacher that would fail to load: each refusal comes before loading (and so before Ray,
    # which starts after the teachers' identities are known)
    missing = tmp_path / "no-such-teacher.pth"
    base = ["teach", "--data", data.location, "--teacher", missing, "--quiet"]
    cases = {
        "class map": ([*base, "--cache", tmp_path / "new.zarr", "--teacher-arch", "resnet18",
                       "--teacher-class-map", wrong_map],
                      ["teacher.class_map: 2 ids", "10 classes", "(option --teacher-class-map)"]),
        "named map": ([*base, "--cache", tmp_path / "new.zarr", "--teacher-arch", "resnet18",
                       "--teacher-class-map", "imagenet"],
                      ["'T-shirt/top' is not a WordNet id", "(option --teacher-class-map)"]),
        "key map": ([*base, "--cache", tmp_path / "new.zarr", "--teacher-key-map", "bogus"],
                    ["teacher.key_map: 'bogus'", "(option --teacher-key-map)"]),
        "option value": ([*base, "--cache", tmp_path / "new.zarr", "--block-rows", "0"],
                         ["block_rows: 0", "(option --block-rows)"]),
        "plan": ([*base, "--cache", cache, "--plan-seed", "8"],
                 ["plan.seed: 3 in cache vs 8", "(option --plan-seed)"]),
        "fewer views": ([*base, "--cache", cache, "--views", "1"],
                        ["holds 3 views; asked for 1", "(option --views)"]),
    }  # fmt: skip
    for name, (argv, culprits) in cases.items():
        result, wall, cpu = _kdcache(*argv)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (name, result.stderr)
        for culprit in culprits:
            assert culprit in lines[0], (name, lines[0])
        assert cpu < CPU_SECONDS, (name, cpu)
        print(f"{name}: refused in {wall:.1f}s ({cpu:.1f}s CPU): {lines[0]}")
    assert not (tmp_path / "new.zarr").exists()
    assert CacheStore.open(str(cache)).plan == PLAN


def test_teach_writes_one_line_per_shard_to_a_file(data, ray_local, tmp_path):
    spec = ModelSpec("regnety_002", data.num_classes, data.channels, 28, data.pixel_mean,
                     data.pixel_std)  # fmt: skip
    teacher_path = tmp_path / "teacher.pth"
    save_checkpoint(str(teacher_path), create_model(spec), spec)
    log = tmp_path / "teach.log"
    command = [sys.executable, "-m", "kdcache", "teach", "--data", data.location, "--cache",
               tmp_path / "cache.zarr", "--teacher", teacher_path, "--views", "1",
               "--address", session_address(ray_local)]  # fmt: skip
    with open(log, "w") as out:
        result = subprocess.run(list(map(str, command)), stdout=out, stderr=subprocess.PIPE,
                                text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = log.read_text()
    assert "\r" not in text and "\r" not in result.stderr
    shards = data.shards_of(["train"])
    lines = [line for line in text.splitlines() if line.startswith("teach: shard ")]
    assert len(lines) == len(shards), text
    for count, line in enumerate(lines, 1):
        assert line.startswith(f"teach: shard {count}/{len(shards)} "), line
        assert "views/s" in line and "ETA" in line and "(index " in line, line
    assert sorted(int(line.split("(index ")[1].split(")")[0]) for line in lines) == [
        s.id for s in shards
    ]


@pytest.mark.parametrize("argv", [["--resolution", "160"],
                                  ["--data", "d", "--teacher", "t", "--resolution", "160"]])  # fmt: skip
def test_an_unknown_option_prints_teachs_usage(argv):
    result, _, _ = _kdcache("teach", *argv)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: kdcache teach "), result.stderr
    assert "kdcache teach: error:" in result.stderr
