"""PyTorch habits of training and evaluation: logs fit for files and pipes, top-5 accuracy, and
an evaluation that leaves the model as it found it."""

import csv
import re
import subprocess
import sys

import timm
import torch

from kdcache.trainer.run import evaluate_model


def test_train_writes_lines_not_bars_into_a_pipe_and_reports_top5(tmp_path, data):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "kdcache", "train", "--data", data.location, "--out",
               str(out), "--model", "resnet10t", "--epochs", "1", "--workers", "2",
               "--batch-size", "32"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    shown = result.stdout + result.stderr
    assert "\r" not in shown  # no tqdm bar in a pipe
    lines = re.findall(r"epoch 0: step (\d+)/(\d+), [\d.]+ img/s, ETA \d+:\d\d", shown)
    assert len(lines) >= 5 and lines[-1][0] == lines[-1][1]  # up to the epoch's last step
    with open(out / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["test_acc"]) <= float(row["test_top5"]) <= 100


def test_evaluate_model_restores_the_mode_and_uses_the_model_device(data):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=data.num_classes, in_chans=1).train()
    scores = evaluate_model(model, data.location, resolution=28, workers=0)
    assert model.training  # left training, as it came
    assert set(scores) == {"acc", "top5"} and 0 <= scores["acc"] <= scores["top5"] <= 100
    model.eval()
    assert evaluate_model(model, data.location, resolution=28, workers=0) == scores
    assert not model.training
