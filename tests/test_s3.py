"""Object storage end to end on a real S3 server (moto on 127.0.0.1): shard, teach, train with
DataLoader workers, inspect, verify and catalog on ``s3://`` give what a local run gives, bit
for bit; ``train --out s3://`` writes and resumes there; no secret is written or printed."""

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import torch
import zarr

from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import ModelSpec, create_model, save_checkpoint
from tests.conftest import S3_KEY, S3_SECRET

pytestmark = pytest.mark.slow

BUCKET = "s3://kdcache"
SHARD = ("--shard-size", "100", "--limit", "train=200", "--limit", "test=100", "--quiet")
TEACH = ("--teacher", "regnet={teacher}", "--views", "2", "--plan-seed", "3", "--topk", "4")
TEACH += ("--workers", "2", "--quiet")
TRAIN = ("--model", "deit_tiny_distilled_patch16_224", "--model-arg", "patch_size=7")
TRAIN += ("--model-arg", "embed_dim=32", "--model-arg", "depth=1", "--model-arg", "num_heads=2")
TRAIN += ("--kd", "soft", "--epochs", "2", "--batch-size", "16", "--lr", "3e-3")
TRAIN += ("--warmup-epochs", "0", "--workers", "2", "--quiet")
TIMING = ("seconds", "train_images_per_s")


class Runs:
    """The commands of the flow, run as subprocesses; every output kept for the secret grep."""

    def __init__(self, root, options: dict):
        self.root, self.options, self.outputs = root, options, []
        self.options_file = root / "storage-options.json"  # the one place the secret may be
        self.options_file.write_text(json.dumps(options))
        self.fs = fsspec.filesystem("s3", **options)
        # the local Ray clusters' sessions and logs, greped too (a short path: Ray's sockets)
        self.ray_dir = tempfile.mkdtemp(prefix="kdray", dir="/tmp")

    def env(self, with_options: bool) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KDCACHE_"))}
        env["RAY_TMPDIR"] = self.ray_dir
        if with_options:
            env["KDCACHE_STORAGE_OPTIONS"] = json.dumps(self.options)
        return env

    def start(self, *args: str, env_options: bool = False) -> subprocess.Popen:
        """``python -m kdcache ARGS`` in ``root`` (so a stray local ``s3:`` folder would show)."""
        return subprocess.Popen([sys.executable, "-m", "kdcache", *args], cwd=self.root,
                                env=self.env(env_options), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    def finish(self, *jobs: subprocess.Popen, check: bool = True) -> list:
        """Wait for commands started together; their results, outputs kept."""
        results = []
        for job in jobs:
            out, err = job.communicate(timeout=600)
            self.outputs.append(out + err)
            results.append(subprocess.CompletedProcess(job.args, job.returncode, out, err))
        for result in results if check else ():
            assert result.returncode == 0, result.stderr
        return results

    def cli(self, *args: str, env_options: bool = False, check: bool = True):
        return self.finish(self.start(*args, env_options=env_options), check=check)[0]

    def here(self, *args: str) -> str:
        """``kdcache ARGS`` in this process, for the local reference runs that hold nothing
        secret (teach on the session's Ray); what it printed."""
        from kdcache.tools.cli.main import main

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            main(list(args))
        self.outputs.append(printed.getvalue())
        return printed.getvalue()

    def flag(self) -> tuple[str, str]:
        return ("--storage-options", f"@{self.options_file}")

    def s3_rows(self, run: str) -> list[dict]:
        return list(csv.DictReader(io.StringIO(self.fs.cat(f"{run}/metrics.csv").decode())))


def _local_rows(run) -> list[dict]:
    with open(os.path.join(run, "metrics.csv")) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(s3_server, ray_local, tmp_path_factory) -> Iterator[Runs]:
    """The flow on S3 and the same flow on local disk. The shard and teach runs get the
    options from ``--storage-options @FILE`` alone (Ray actors only through their
    runtime_env), the train runs from ``$KDCACHE_STORAGE_OPTIONS`` alone. The S3 commands run
    as subprocesses, each local one beside its S3 twin: shard, teach and inspect in this
    process (teach on the session's Ray), train as a subprocess too (the same torch set-up)."""
    root = tmp_path_factory.mktemp("s3")
    runs = Runs(root, s3_server)
    local = root / "local"
    job = runs.start("shard", "--out", f"{BUCKET}/data", *SHARD, *runs.flag())
    runs.here("shard", "--out", str(local / "data"), *SHARD)
    runs.finish(job)
    manifest = Manifest.read(str(local / "data"))
    spec = ModelSpec("regnety_002", 10, 1, 28, manifest.pixel_mean, manifest.pixel_std)
    torch.manual_seed(0)
    teacher = str(root / "teacher.pth")
    save_checkpoint(teacher, create_model(spec), spec)
    teach = [a.format(teacher=teacher) for a in TEACH]
    job = runs.start("teach", "--data", f"{BUCKET}/data", "--cache", f"{BUCKET}/cache.zarr",
                     "--catalog", f"{BUCKET}/catalog", *teach, *runs.flag())  # fmt: skip
    runs.here("teach", "--data", str(local / "data"), "--cache", str(local / "cache.zarr"), *teach)
    runs.finish(job)
    runs.finish(
        runs.start("train", "--data", str(local / "data"), "--cache", str(local / "cache.zarr"),
                   "--out", str(local / "run"), *TRAIN),
        runs.start("train", "--data", f"{BUCKET}/data", "--cache", f"{BUCKET}/cache.zarr",
                   "--out", f"{BUCKET}/run", *TRAIN, env_options=True),
    )  # fmt: skip
    cache = f"{BUCKET}/cache.zarr"
    jobs = (
        runs.start("inspect", cache, "--json", *runs.flag()),
        runs.start(
            "verify",
            cache,
            "--samples",
            "8",
            "--json",
            "--teacher",
            f"regnet={teacher}",
            env_options=True,
        ),
        runs.start("catalog", "--catalog", f"{BUCKET}/catalog", "--json", *runs.flag()),
    )
    here = json.loads(runs.here("inspect", str(local / "cache.zarr"), "--json"))
    inspected, runs.verified, runs.listed = runs.finish(*jobs)
    runs.inspected = [json.loads(inspected.stdout), here]
    yield runs
    shutil.rmtree(runs.ray_dir, ignore_errors=True)


def test_s3_shards_and_cache_equal_the_local_ones_bitwise(runs):
    local = runs.root / "local"
    for split, count in (("train", 2), ("test", 1)):
        for index in range(count):
            name = f"shards/{split}-{index:06d}.tar"
            assert runs.fs.cat(f"{BUCKET}/data/{name}") == (local / "data" / name).read_bytes()
    remote = zarr.open_group(f"{BUCKET}/cache.zarr", mode="r", storage_options=runs.options)
    here = zarr.open_group(str(local / "cache.zarr"), mode="r")
    names = sorted(name for name, _ in here.arrays()) + [
        f"teachers/regnet/{name}" for name, _ in here["teachers/regnet"].arrays()
    ]
    assert "teachers/regnet/topk_logits" in names and "params" in names
    for name in names:
        mine, theirs = here[name][...], remote[name][...]
        assert mine.dtype == theirs.dtype and mine.tobytes() == theirs.tobytes(), name
    assert here["teachers/regnet"].attrs.asdict() == remote["teachers/regnet"].attrs.asdict()
    differing = {k for k in here.attrs if here.attrs[k] != remote.attrs[k]}
    assert differing <= {"created", "dataset", "identity_sha256"}  # time, manifest path, hash
    assert remote.attrs["dataset"]["manifest"] == f"{BUCKET}/data/manifest.parquet"


def test_train_with_two_workers_from_s3_matches_local_disk_and_writes_to_s3(runs):
    s3_rows, local_rows = runs.s3_rows(f"{BUCKET}/run"), _local_rows(runs.root / "local/run")
    assert len(s3_rows) == len(local_rows) == 2
    for got, want in zip(s3_rows, local_rows, strict=True):
        assert {k: v for k, v in got.items() if k not in TIMING} == {
            k: v for k, v in want.items() if k not in TIMING
        }
    held = {path.rsplit("/", 1)[1] for path in runs.fs.ls(f"{BUCKET}/run")}
    assert {"config.json", "metrics.csv", "checkpoint.pth", "resume.pth"} <= held
    assert not (runs.root / "s3:").exists()
    config = json.loads(runs.fs.cat(f"{BUCKET}/run/config.json"))
    assert config["out"] == f"{BUCKET}/run" and "storage_options" not in config


def test_sigterm_then_resume_from_s3_matches_the_uninterrupted_run(runs):
    run = f"{BUCKET}/cut"
    command = [sys.executable, "-m", "kdcache", "train", "--data", f"{BUCKET}/data",
               "--cache", f"{BUCKET}/cache.zarr", "--out", run, *TRAIN]  # fmt: skip
    job = subprocess.Popen(command, env=runs.env(True), cwd=runs.root, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)  # fmt: skip
    while not runs.fs.exists(f"{run}/resume.pth"):  # epoch 0 saved: SIGTERM now stops epoch 1
        assert job.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.05)
    runs.fs.invalidate_cache()
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=300) == 143
    runs.outputs.append(job.stdout.read())
    assert "--resume" in runs.outputs[-1]
    assert len(runs.s3_rows(run)) == 1
    runs.cli("train", "--data", f"{BUCKET}/data", "--cache", f"{BUCKET}/cache.zarr",
             "--out", run, *TRAIN, "--resume", env_options=True)  # fmt: skip
    resumed, whole = runs.s3_rows(run), runs.s3_rows(f"{BUCKET}/run")
    assert len(resumed) == len(whole) == 2
    for got, want in zip(resumed, whole, strict=True):
        assert {k: v for k, v in got.items() if k not in TIMING} == {
            k: v for k, v in want.items() if k not in TIMING
        }


def test_inspect_verify_and_catalog_on_s3(runs):
    s3, here = runs.inspected
    assert s3["teachers"] == here["teachers"] and s3["fingerprint"] == here["fingerprint"]
    assert s3["teachers"]["regnet"]["shards_total"] == 2 and not s3["teachers"]["regnet"]["missing"]
    report = json.loads(runs.verified.stdout)
    assert report["ok"] and report["regions_checked"] == 4 and report["views_recomputed"] == 8
    (row,) = [json.loads(line) for line in runs.listed.stdout.splitlines()]
    assert row["cache"] == f"{BUCKET}/cache.zarr" and row["complete"] and row["teacher"] == "regnet"


def test_no_secret_in_anything_the_s3_runs_wrote_or_printed(runs):
    secrets = (S3_KEY.encode(), S3_SECRET.encode())
    objects = runs.fs.find(BUCKET)
    assert len(objects) > 20  # shards, manifest, cache chunks, catalogue, run files
    for path in objects:
        data = runs.fs.cat(path)
        assert not any(secret in data for secret in secrets), path
    ray_logs = [f for f in Path(runs.ray_dir).rglob("*.log") if f.is_file()]
    assert any("runtime_env" in f.name for f in ray_logs)  # Ray's own logs are greped too
    for folder, _, files in [*os.walk(runs.root), *os.walk(runs.ray_dir)]:
        for name in files:
            path = os.path.join(folder, name)
            if path != str(runs.options_file) and os.path.isfile(path):
                with open(path, "rb") as f:
                    data = f.read()
                assert not any(secret in data for secret in secrets), path
    for output in runs.outputs:
        assert S3_KEY not in output and S3_SECRET not in output
