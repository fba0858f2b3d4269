"""The kdcache command line: help for every command, clear one-line errors."""

import subprocess
import sys

import pytest

COMMANDS = ["shard", "index", "teach", "train", "catalog", "inspect", "verify", "plot", "demo",
            "bench"]  # fmt: skip
BENCHMARKS = ["teach", "train", "kd", "replay", "reads", "mixing", "timm", "quality", "scale"]


def _kdcache(*args):
    return subprocess.run(
        [sys.executable, "-m", "kdcache.tools.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_describes_every_command():
    result = _kdcache("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    result = _kdcache("bench", "--help")
    assert result.returncode == 0
    for benchmark in BENCHMARKS:
        assert benchmark in result.stdout


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("shard", ["--source", "--shard-size", "--limit"]),
        ("teach", ["--teacher", "--topk", "--samples", "--views", "--plan-seed", "--address"]),
        (
            "train",
            [
                "--kd",
                "--cache",
                "--catalog",
                "--alpha",
                "--tau",
                "--model",
                "--epochs",
                "--teacher-name",
                "--teacher-weight",
                "--head-teacher",
                "--targets",
                "--topk",
                "--samples",
                "--tail",
            ],
        ),  # fmt: skip
        (
            "train",
            ["--teacher", "--teacher-checkpoint", "--resume", "--ema-decay", "--tensorboard"],
        ),
        ("plot", ["--out", "--label"]),
        ("catalog", ["--catalog", "--data", "--teacher", "--json"]),
        ("inspect", ["--data", "--json", "--plot"]),
        ("verify", ["--samples", "--teacher", "--data"]),
        ("demo", ["--out", "--quick"]),
        ("bench teach", ["--teacher", "--resolution", "--batch-size", "--views"]),
        ("bench kd", ["--out", "--train-limit", "--student-epochs", "--seed"]),
    ],
)
def test_each_command_documents_its_options(command, options):
    result = _kdcache(*command.split(), "--help")
    assert result.returncode == 0
    for option in options:
        assert option in result.stdout


def test_cli_shards_and_refuses_a_wrong_cache(tmp_path, data, cache):
    result = _kdcache("shard", "--out", str(tmp_path / "d"), "--limit", "train=150", "--limit",
                      "test=20", "--shard-size", "50", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "4 shards" in result.stdout and (tmp_path / "d" / "manifest.parquet").exists()
    result = _kdcache("train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"),
                      "--model", "resnet10t", "--kd", "soft", "--cache", cache, "--quiet")  # fmt: skip
    assert result.returncode == 2
    assert "dataset.fingerprint" in result.stderr and "Traceback" not in result.stderr
    result = _kdcache(
        "teach", "--data", str(tmp_path / "nowhere"), "--cache", "c", "--teacher", "t"
    )
    assert result.returncode == 2 and "no manifest here" in result.stderr
    result = _kdcache("plot", str(tmp_path / "no-run"), "--out", str(tmp_path / "p.png"))
    assert result.returncode == 2 and "no-run/metrics.csv: no metrics" in result.stderr


def test_training_and_the_cli_never_import_ray():
    code = "import sys, kdcache.tools.cli.main, kdcache.trainer.run.engine; print('ray' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "False", result.stderr


def test_a_library_error_naming_a_field_is_printed_with_the_flag_that_sets_it(
    data, tmp_path, capsys
):
    from kdcache.tools.cli import main as cli
    from kdcache.tools.cli.config_options import flag_of

    args = cli.build_parser().parse_args(
        ["teach", "--data", "d", "--cache", "c", "--teacher", "t.pth"]
    )
    found = {field: flag_of(args, field) for field in
             ("topk", "manifest", "plan.views", "views", "teacher.class_map", "nothing")}  # fmt: skip
    assert found == {"topk": "--topk", "manifest": "--data", "plan.views": "--views",
                     "views": "--views", "teacher.class_map": "--teacher-class-map",
                     "nothing": None}  # fmt: skip

    with pytest.raises(SystemExit):  # a real refusal: the plan is checked against the data
        cli.main(["teach", "--data", data.location, "--cache", str(tmp_path / "c.zarr"),
                  "--teacher", str(tmp_path / "t.pth"), "--views", "0"])  # fmt: skip
    assert capsys.readouterr().err.strip() == (
        "kdcache teach: error: plan: views must be at least 1, got 0 (option --views)"
    )
