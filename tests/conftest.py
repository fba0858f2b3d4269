"""Shared fixtures: a real Fashion-MNIST slice, a trained RegNetY teacher, real Ray caches."""

import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from kdcache.pipeline.data import (
    Manifest,  # noqa: E402
    fashion_mnist,  # noqa: E402
    write_shards,  # noqa: E402
)
from kdcache.pipeline.views import ViewPlan  # noqa: E402

SHARD_SIZE = 100
TRAIN_ROWS = 450  # four full shards and a short one
TEST_ROWS = 200
PLAN = ViewPlan(seed=3, views=3)
TOPK = 4
SAMPLES = 8
# every operation at once, teacher-side Mixup and CutMix included
MIXED_PLAN = ViewPlan(
    seed=5,
    views=2,
    randaugment="rand-m9-mstd0.5-inc1",
    color_jitter=(0.4, 0.4, 0.0, 0.0),
    erase_prob=0.5,
    erase_mode="pixel",
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
)


def run_cli(*argv, capsys) -> tuple[int, str]:
    """``kdcache ARGV`` in this process: its exit code and what it printed (out, then err)."""
    from kdcache.tools.cli.main import main

    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def make_shards(root, train_rows=TRAIN_ROWS, test_rows=TEST_ROWS) -> Manifest:
    return write_shards(
        fashion_mnist(),
        str(root),
        shard_size=SHARD_SIZE,
        limits={"train": train_rows, "test": test_rows},
        progress=False,
    )


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Manifest:
    """Fashion-MNIST slice: 450 train rows in 5 shards (last one short), 200 test rows."""
    return make_shards(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def teacher_path(data, tmp_path_factory) -> str:
    """A regnety_002 teacher trained for four epochs on the slice, at 32 px (kdcache checkpoint)."""
    from kdcache.trainer.run import TrainConfig, train

    out = tmp_path_factory.mktemp("teacher")
    train(
        TrainConfig(
            manifest=data.location,
            out=str(out),
            model="regnety_002",
            resolution=32,
            epochs=4,
            batch_size=64,
            lr=5e-3,
            warmup_epochs=0,
            workers=0,
            progress=False,
        )
    )
    return str(out / "checkpoint.pth")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster of this machine's CPUs, on the loopback interface as ``kdcache
    teach`` starts it, shared by the session."""
    import ray

    from kdcache.pipeline.teach import start_ray, stop_ray

    start_ray(None)
    yield ray
    stop_ray()


def session_address(ray) -> str:
    """``--address`` of the session's Ray for a command in another process: its GCS port on the
    loopback interface, where a kdcache-started Ray listens (the runtime context may name the
    machine's address instead)."""
    return "127.0.0.1:" + ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]


def small_world(root: pathlib.Path, plan, topk: int) -> Manifest:
    """``root/data`` (200 train rows in 2 shards, 100 test), ``root/teacher.pth`` (a random
    regnety_002 at 28 px) and ``root/cache.zarr`` of it (teacher ``regnet``): the material the
    bad-input and hostile-input tests damage."""
    from kdcache.pipeline.teach import ModelSpec, TeacherSource, create_model, save_checkpoint

    manifest = make_shards(root / "data", train_rows=200, test_rows=100)
    spec = ModelSpec("regnety_002", 10, 1, 28, manifest.pixel_mean, manifest.pixel_std)
    torch.manual_seed(0)
    save_checkpoint(str(root / "teacher.pth"), create_model(spec), spec)
    teacher = TeacherSource(str(root / "teacher.pth"), name="regnet")
    teach(manifest, None, root / "cache.zarr", teachers=[teacher], plan=plan, topk=topk)
    return manifest


def teach(data, teacher_path, cache, **options):
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach

    config = TeachConfig(
        manifest=data.location,
        cache=None if cache is None else str(cache),
        teachers=options.pop("teachers", [TeacherSource(teacher_path, name="regnet")]),
        plan=options.pop("plan", PLAN),
        topk=options.pop("topk", TOPK),
        batch_size=options.pop("batch_size", 128),
        progress=False,
        **options,
    )
    return run_teach(config)


@pytest.fixture(scope="session")
def cache(data, teacher_path, ray_local, tmp_path_factory) -> str:
    """A complete cache of the slice's train split: 3 views, top-4, teacher 'regnet'."""
    location = str(tmp_path_factory.mktemp("cache") / "cache.zarr")
    teach(data, teacher_path, location)
    return location


@pytest.fixture(scope="session")
def sampled_cache(data, teacher_path, ray_local, tmp_path_factory) -> str:
    """A complete cache with two teachers, ``regnet`` (the teacher at 32 px) and ``regnet28``
    (the same weights at 28 px: another function of the image), top-4 and 8 sampled ids."""
    from kdcache.pipeline.teach import TeacherSource

    location = str(tmp_path_factory.mktemp("sampled") / "cache.zarr")
    teachers = [
        TeacherSource(teacher_path, name="regnet"),
        TeacherSource(teacher_path, name="regnet28", resolution=28),
    ]
    teach(data, teacher_path, location, teachers=teachers, samples=SAMPLES)
    return location


@pytest.fixture(scope="session")
def mixed_cache(data, teacher_path, ray_local, tmp_path_factory) -> str:
    """A complete cache whose plan has every operation (MIXED_PLAN): 2 views, top-4."""
    location = str(tmp_path_factory.mktemp("mixed") / "cache.zarr")
    teach(data, teacher_path, location, plan=MIXED_PLAN)
    return location


# distinctive fake credentials: tests grep everything the S3 runs wrote and printed for them
S3_KEY = "AKIAKDCACHEFAKEKEY17"
S3_SECRET = "kdcache-fake-secret-9QzX7wPq"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (moto's) on 127.0.0.1 with bucket ``kdcache``, shared by the session:
    the fsspec storage options that reach it (fake key and secret, endpoint)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client_kwargs = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    credentials = {"aws_access_key_id": S3_KEY, "aws_secret_access_key": S3_SECRET}
    boto3.client("s3", **client_kwargs, **credentials).create_bucket(Bucket="kdcache")
    yield {"key": S3_KEY, "secret": S3_SECRET, "client_kwargs": client_kwargs}
    server.stop()


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test starts with this worker's torch thread count: an in-process command may set
    its own (a benchmark's ``--threads``), and a later test comparing an in-process run with a
    fresh process's would compare different thread counts (float sums differ with threads)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
