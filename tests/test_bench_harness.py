"""Every benchmark, run at a tiny size through the one harness: its JSON holds the full
configuration and, per mode, every repeat with median and min-max, and the modes ran
interleaved (docs/results)."""

import json
import os
import subprocess
import sys
import tarfile

import pytest

from kdcache.errors import ConfigError
from kdcache.tools.bench.harness import STAMP, work_folder

MACHINE = {"cpu_count", "cpu_model", "load_average_start", "load_average_end"}
VERSIONS = {"python", "torch", "timm", "ray", "kdcache"}


def _check(result: dict, benchmark: str, modes: list[str], repeats: int, config_keys: set):
    """The report's structure, and that the timed runs alternated mode by mode."""
    assert result["benchmark"] == benchmark
    config = result["config"]
    assert config["repeats"] == repeats and "warmup" in config
    assert set(config["machine"]) >= MACHINE and set(config["versions"]) >= VERSIONS
    assert config_keys <= set(config), config_keys - set(config)
    assert result["order"] == modes * repeats  # ABCABC
    assert set(result["modes"]) == set(modes)
    for mode, figures in result["modes"].items():
        assert figures, mode
        for name, figure in figures.items():
            assert len(figure["runs"]) == repeats, (mode, name)
            assert figure["min"] <= figure["median"] <= figure["max"], (mode, name)
            assert figure["min"] == min(figure["runs"]) and figure["max"] == max(figure["runs"])
    return config


def _run(tmp_path, *args) -> dict:
    """``kdcache ARGS --json FILE`` in a subprocess (the CLI as a user runs it); the JSON."""
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "kdcache", *args, "--json", str(out)],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def _main(tmp_path, *args) -> dict:
    """``kdcache ARGS --json FILE`` in this process (Ray, if needed, is the session's); the JSON."""
    from kdcache.tools.cli.main import main

    out = tmp_path / "result.json"
    main([*args, "--json", str(out)])
    return json.loads(out.read_text())


def test_bench_train_measures_the_teacher_inside_the_online_run(
    tmp_path, data, cache, teacher_path
):
    result = _main(tmp_path, "bench", "train", "--data", data.location, "--cache", cache,
                  "--teacher-checkpoint", teacher_path, "--topk", "4", "--steps", "2",
                  "--warmup-steps", "1", "--batch-size", "16", "--workers", "1",
                  "--repeats", "2", "--warmup", "0", "--threads", "1")  # fmt: skip
    modes = ["none", "cached", "online", "teacher"]
    config = _check(result, "bench-train", modes, 2,
                    {"torch_threads", "loader_workers", "persistent_workers", "plan", "views",
                     "topk", "student_args", "teacher_resolution_online"})  # fmt: skip
    assert config["torch_threads"] == 1 and config["persistent_workers"] is True
    assert config["plan"]["seed"] == 3 and config["topk"] == 4  # the given cache's
    in_run = result["modes"]["online"]["teacher_ms_per_image"]["runs"]
    cached = result["modes"]["cached"]["images_per_s"]["runs"]
    ratios = result["ratios"]
    # the ideal comes from the cached run and the teacher's time inside the same repeat's online run
    assert ratios["ideal_cached_over_online"]["runs"] == pytest.approx(
        [1 + c * t / 1e3 for c, t in zip(cached, in_run, strict=True)]
    )
    share = [m / i for m, i in zip(ratios["cached_over_online"]["runs"],
                                   ratios["ideal_cached_over_online"]["runs"], strict=True)]  # fmt: skip
    assert ratios["share_of_ideal"]["runs"] == pytest.approx(share)
    assert len(ratios["cached_over_none"]["runs"]) == 2


def test_bench_teach_compares_teach_with_raw_in_its_own_layout(tmp_path):
    result = _run(tmp_path, "bench", "teach", "--work", str(tmp_path / "work"), "--images", "200",
                  "--shard-size", "100", "--teacher", "regnety_002", "--resolution", "32",
                  "--views", "1", "--workers", "2", "--raw-layouts", "1x1", "--repeats", "2",
                  "--warmup", "0")  # fmt: skip
    config = result["config"]
    cpus = os.cpu_count()
    renders = ["render 1 CPU"] + ([f"render {cpus} CPUs"] if cpus > 1 else [])
    modes = ["raw 1x1", "raw 2x1", "raw 2x1, default allocator", "teach", *renders]
    assert config["layouts"] == ["1x1", "2x1"]  # the one asked for, and teach's own
    _check(result, "bench-teach", modes, 2,
           {"teach_layout", "same_layout_mode", "best_layout_mode", "shards", "shard_size",
            "total_views", "plan", "topk", "batch_size", "host_allocator",
            "default_allocator_mode"})  # fmt: skip
    assert config["teach_layout"] == {"actors": 2, "threads": 1}
    assert config["same_layout_mode"] == "raw 2x1" and config["total_views"] == 200
    raw = {mode: result["modes"][mode]["views_per_s"]["median"] for mode in modes[:2]}
    assert config["best_layout_mode"] == max(raw, key=raw.get)
    teach = result["modes"]["teach"]
    assert {"views_per_s", "steady_views_per_s", "ray_start_s", "actor_startup_s"} <= set(teach)
    assert all(s > 0 for s in teach["ray_start_s"]["runs"])  # the clock starts before Ray
    assert teach["actors"]["runs"] == [2, 2]  # the layout raw 2x1 matches
    for name in ("teach_over_raw_same_layout", "teach_over_raw_best_layout",
                 "steady_over_raw_same_layout", "raw_reuse_over_default_allocator",
                 "render_all_cpus_over_one"):  # fmt: skip
        assert len(result["ratios"][name]["runs"]) == 2
    for name in renders:  # the render stage alone, its pool sized from the CPUs
        assert result["modes"][name]["views_per_s"]["min"] > 0
    assert result["modes"]["render 1 CPU"]["render_threads"]["runs"] == [0, 0]  # serial
    assert result["modes"][renders[-1]]["render_threads"]["median"] == (cpus if cpus > 1 else 0)


def test_bench_replay_interleaves_every_configuration_path_and_mode(tmp_path):
    result = _run(tmp_path, "bench", "replay", "--images", "5", "--resolution", "32", "--views",
                  "2", "--repeats", "2", "--warmup", "1")  # fmt: skip
    names = [f"{c} / {p} / {m}" for c in ("crop + flip", "full plan")
             for p in ("trainer", "teacher")
             for m in ("kdcache", "cpu2", "today", "timm", "decode")]  # fmt: skip
    config = _check(result, "bench-replay", names, 2,
                    {"images", "teacher_views", "torch_threads", "plans", "modes_meaning"})  # fmt: skip
    assert config["torch_threads"] == 1 and "last partial batch" in config["modes_meaning"]["timm"]
    assert config["modes_meaning"]["kdcache"] == "renderer cpu/4"  # the default renderer
    assert {"core_us", "wall_us"} == set(result["modes"][names[0]])
    assert "full plan / teacher / timm_over_kdcache" in result["ratios"]
    # timm's Mixup mixes every sample, the last partial batch of 128 too (here: the only one)
    for path in ("trainer", "teacher"):
        assert result["modes"][f"full plan / {path} / timm"]["mixed_share"]["runs"] == [1.0, 1.0]
        assert result["modes"][f"crop + flip / {path} / timm"]["mixed_share"]["median"] == 0.0


def test_bench_mixing_rebuilds_the_caches_a_former_run_left(tmp_path, ray_local):
    from kdcache.pipeline.cache import CacheStore
    from kdcache.pipeline.views import ViewPlan
    from kdcache.tools.bench.bench_data import bench_manifest

    work = tmp_path / "work"
    manifest = bench_manifest(str(work / "data"), "fashion-mnist", 200, 50, 100)
    (work / STAMP).write_text(json.dumps({"benchmark": "bench-mixing"}))
    for name in ("mixed.zarr", "plain.zarr"):  # what a run with other options left: 2 views
        CacheStore.create(str(work / name), manifest=manifest, plan=ViewPlan(seed=9, views=2),
                          topk=5, splits=["train"])  # fmt: skip
    result = _main(tmp_path, "bench", "mixing", "--work", str(work), "--images", "200",
                  "--test-images", "50", "--shard-size", "100", "--views", "1", "--epochs", "1",
                  "--teacher-epochs", "1", "--repeats", "2")  # fmt: skip
    config = _check(result, "bench-mixing", ["exact", "label", "none"], 2,
                    {"plans", "teacher", "student", "repeat_seeds", "torch_threads"})  # fmt: skip
    assert config["repeat_seeds"] == [0, 1]
    for name, kind in (("mixed.zarr", "mixed"), ("plain.zarr", "plain")):
        store = CacheStore.open(str(work / name))
        assert store.plan.to_attrs() == config["plans"][kind]
        assert store.plan.views == 1
    assert {"test_acc", "images_per_s"} == set(result["modes"]["exact"])


def test_bench_kd_rounds_every_run_with_the_next_training_seed(tmp_path, ray_local):
    from kdcache.tools.bench.kd_objectives import BenchConfig, run_bench

    config = BenchConfig(train_limit=200, test_limit=50, shard_size=100,
                         teachers=("regnety_002",), teacher_epochs=1, views=1, topks=(1,),
                         student_args={"patch_size": 7, "embed_dim": 32, "depth": 1,
                                       "num_heads": 2},
                         student_epochs=1, workers=0, noise_seed=None, repeats=2)  # fmt: skip
    result = run_bench(str(tmp_path / "kd"), config, progress=False)
    labels = [run["run"] for run in result["runs"]]
    _check(result, "bench-kd", labels, 2, {"teachers", "phase_seconds", "repeat_seeds", "plan"})
    assert json.loads((tmp_path / "kd" / "bench.json").read_text()) == json.loads(
        json.dumps(result)
    )
    assert {"test_acc", "seconds"} == set(result["modes"]["no KD"])


def test_bench_kd_feature_rows_report_each_target_kinds_bytes(tmp_path, ray_local):
    """A ViT teacher trained here, cached once with logits, pre_logits and attention; a ResNet
    student's rows (no KD, logits, + features, + attention, + both) read their targets' bytes
    from the cache's layout (what inspect prints)."""
    from kdcache.pipeline.cache import CacheStore
    from kdcache.tools.bench.kd_objectives import BenchConfig, format_table, run_bench

    config = BenchConfig(train_limit=100, test_limit=20, shard_size=100, teacher_epochs=1,
                         views=1, student_epochs=1, batch_size=50, workers=0, noise_seed=None,
                         repeats=1, feature_rows=True, feature_students=("resnet10t",),
                         vit_teacher_args={"patch_size": 7, "embed_dim": 24, "depth": 1,
                                           "num_heads": 2},
                         attention_targets=("0:s2x2",))  # fmt: skip
    result = run_bench(str(tmp_path / "kd"), config, progress=False)
    labels = [run["run"] for run in result["runs"]]
    assert labels == ["resnet10t: no KD", "resnet10t: soft KD, logits (top-10)",
                      "resnet10t: logits + features (pre_logits)",
                      "resnet10t: logits + attention (0:s2x2)",
                      "resnet10t: logits + features + attention"]  # fmt: skip
    _check(result, "bench-kd", labels, 1, {"teachers", "target_bytes_per_view", "feature_loss"})
    sizes = result["config"]["target_bytes_per_view"]["vit"]
    stored = CacheStore.open(str(tmp_path / "kd" / "cache.zarr")).view_bytes("vit")
    assert sizes == {kind: round(value, 1) for kind, value in stored.items()}
    assert set(sizes) == {"topk", "pre_logits", "attention:0:s2x2"}
    assert 48 <= sizes["pre_logits"] < 50 and 8 <= sizes["attention:0:s2x2"] < 10  # fp16
    row = {run["run"]: run["bytes_per_view"] for run in result["runs"]}
    assert row["resnet10t: logits + features + attention"] == round(sum(sizes.values()), 1)
    assert [d["run"] for d in result["done"]] == labels  # bench.json kept after every run
    table = format_table(result)
    assert "| resnet10t: logits + attention (0:s2x2) | " in table and "pre_logits 4" in table


def test_bench_timm_runs_through_the_harness(tmp_path, data, cache, teacher_path):
    kwargs = '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}'
    result = _main(tmp_path, "bench", "timm", "--data", data.location, "--cache", cache,
                  "--teacher-checkpoint", teacher_path, "--model-kwargs", kwargs, "--steps",
                  "2", "--warmup-steps", "1", "--batch-size", "16", "--workers", "1",
                  "--repeats", "2", "--warmup", "0", "--accuracy-epochs", "1")  # fmt: skip
    config = _check(result, "bench-timm", ["none", "online", "cached", "teacher"], 2,
                    {"tasks", "plan", "topk", "student_kwargs", "persistent_workers"})  # fmt: skip
    assert config["distill"] == "token" and config["topk"] == 4
    assert "teacher_ms_per_image" in result["modes"]["online"]
    assert len(result["ratios"]["share_of_ideal"]["runs"]) == 2
    accuracy = result["accuracy"]  # one epoch of each task, and the no-KD seed noise
    assert list(accuracy) == ["none", "none, seed + 1", "online", "cached"]
    assert [row["seed"] for row in accuracy.values()] == [0, 1, 0, 0]
    assert all(0 <= row["test_acc"] <= 100 and row["images_per_s"] > 0 for row in accuracy.values())


def test_bench_replay_loaders_times_kdloader_against_timms_loader(tmp_path):
    result = _run(tmp_path, "bench", "replay", "--loaders", "--loader-images", "100",
                  "--resolution", "32", "--batch-size", "16", "--repeats", "2", "--warmup", "0",
                  "--work", str(tmp_path / "work"))  # fmt: skip
    modes = ["loader / kdcache", "loader / timm"]
    config = _check(result, "bench-replay", modes, 2, {"images", "workers", "batch_size"})
    assert config["workers"] == 2
    for mode in modes:  # every image once per epoch
        assert result["modes"][mode]["images"]["runs"] == [100, 100]
        for figure in ("worker_cpu_ms_per_image", "main_cpu_ms_per_image"):  # workers counted
            assert all(ms > 0 for ms in result["modes"][mode][figure]["runs"]), (mode, figure)
    assert len(result["ratios"]["kdcache_over_timm"]["runs"]) == 2
    assert len(result["ratios"]["timm_cpu_over_kdcache"]["runs"]) == 2


def test_gpu_views_interleaves_renderers(tmp_path):
    from kdcache.tools.bench.gpu_views import main

    out = tmp_path / "gpu.json"
    main(["--device", "cpu", "--images", "4", "--views", "2", "--size", "32", "--repeats", "2",
          "--compare", "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    _check(result, "gpu-views", ["device/1", "cpu/4"], 2, {"gpu_utilisation", "torch_threads"})


def test_a_work_folder_holding_other_files_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("not a benchmark's")
    with pytest.raises(ConfigError, match="no kdcache-bench.json"):
        work_folder(str(tmp_path), "bench-train", {})
    other = tmp_path / "other"
    other.mkdir()
    (other / STAMP).write_text(json.dumps({"benchmark": "bench-teach"}))
    with pytest.raises(ConfigError, match="'bench-teach', expected 'bench-train'"):
        work_folder(str(other), "bench-train", {})
    again = work_folder(str(other), "bench-teach", {"images": 3})
    assert json.loads((other / STAMP).read_text())["options"] == {"images": 3} and again == str(
        other
    )


def test_bench_modules_import_no_torch():
    """The CLI loads benchmark modules lazily: importing one must not import torch."""
    modules = ["harness", "bench_data", "train_speed", "teach_speed", "kd_objectives",
               "kd_features", "replay_cost", "mixing_accuracy", "versus_timm", "gpu_views",
               "view_quality"]  # fmt: skip
    code = (f"import importlib, sys\nfor m in {modules}:\n"
            "    importlib.import_module('kdcache.tools.bench.' + m)\n"
            "    print(m, 'torch' in sys.modules, 'numpy' in sys.modules)")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.split("\n")[:-1] == [f"{m} False False" for m in modules], done.stderr


def test_shape_sets_the_defaults_and_a_given_flag_wins():
    """``--shape imagenet`` picks the ImageNet-shaped defaults; an option given still wins."""
    from kdcache.tools.bench.harness import apply_shape
    from kdcache.tools.bench.train_speed import SHAPES
    from kdcache.tools.cli.main import build_parser

    args = build_parser().parse_args(["bench", "train", "--shape", "imagenet", "--images", "7"])
    apply_shape(args, SHAPES)
    assert (args.source, args.resolution, args.teacher, args.images) == (
        "imagenet-shaped", 224, "efficientnet_lite0", 7)  # fmt: skip
    args = build_parser().parse_args(["bench", "train"])
    apply_shape(args, SHAPES)
    assert (args.source, args.resolution, args.images) == ("fashion-mnist", 28, 10000)


def test_imagenet_shaped_slice_is_rgb_jpegs_over_all_classes(tmp_path):
    """The ImageNet shape's slice: JPEGs kept as JPEGs, RGB, every class folder a class."""
    from kdcache.tools.bench.bench_data import bench_manifest

    manifest = bench_manifest(str(tmp_path / "data"), "imagenet-shaped", 6, 2, 3)
    assert (manifest.num_classes, manifest.channels) == (1000, 3)
    assert len(manifest.shards_of("train")) == 2 and len(manifest.shards_of("test")) == 1
    with tarfile.open(manifest.shard_url(manifest.shards_of("train")[0])) as tar:
        assert {name.rsplit(".", 1)[1] for name in tar.getnames()} == {"jpg", "cls"}
