"""A student's starting weights: timm pretrained weights from a file or the local Hugging Face
cache (nothing downloaded), or an initial checkpoint loaded strictly with a key map."""

import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from kdcache.pipeline.teach import ModelSpec, create_model, save_checkpoint
from kdcache.trainer.run import TrainConfig, train

LAYER = "layer1.0.conv1.weight"  # a weight that only training changes (lr 0 here)


def _frozen_run(data, out, **options) -> dict:
    """One epoch at learning rate 0: the saved weights are the starting weights."""
    config = TrainConfig(manifest=data.location, out=str(out), model="resnet10t", epochs=1,
                         batch_size=64, workers=0, lr=0.0, min_lr=0.0, weight_decay=0.0,
                         progress=False, **options)  # fmt: skip
    train(config)
    return torch.load(os.path.join(out, "checkpoint.pth"), weights_only=True)["model"]


def _published(seed: int) -> dict:
    torch.manual_seed(seed)
    return timm.create_model("resnet10t").state_dict()  # 3 channels, 1000 classes


def test_pretrained_path_starts_from_the_file_with_a_new_classifier(tmp_path, data):
    weights = _published(7)
    save_file(weights, tmp_path / "w.safetensors")
    start = _frozen_run(data, tmp_path / "run", pretrained_path=str(tmp_path / "w.safetensors"))
    assert torch.equal(start[LAYER], weights[LAYER])
    assert start["fc.weight"].shape == (data.num_classes, 512)  # timm's fine-tuning head
    # the RGB stem summed to the grey data's one channel, as timm adapts it
    assert torch.allclose(start["conv1.0.weight"], weights["conv1.0.weight"].sum(1, keepdim=True))


def _train_cli(data, out, *extra, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kdcache", "train", "--data", data.location, "--out",
               str(out), "--model", "resnet10t", "--epochs", "1", "--workers", "0", "--lr", "0",
               "--min-lr", "0", "--weight-decay", "0", "--quiet", *extra]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_pretrained_comes_from_the_hugging_face_cache_or_is_refused(tmp_path, data):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    refused = _train_cli(data, tmp_path / "none", "--pretrained", env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "no local copy of timm/resnet10t.c3_in1k" in refused.stderr
    assert "give pretrained_path (option --pretrained)" in refused.stderr
    assert not (tmp_path / "none" / "metrics.csv").exists()

    repo = tmp_path / "hf" / "hub" / "models--timm--resnet10t.c3_in1k"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    weights = _published(3)
    save_file(weights, repo / "snapshots" / "abc" / "model.safetensors")
    result = _train_cli(data, tmp_path / "run", "--pretrained", env=env)
    assert result.returncode == 0, result.stderr
    start = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["model"]
    assert torch.equal(start[LAYER], weights[LAYER])


def test_initial_checkpoint_is_loaded_strictly_with_a_key_map(tmp_path, data):
    spec = ModelSpec("resnet10t", data.num_classes, data.channels, 28, (0.5,), (0.5,))
    torch.manual_seed(5)
    source = create_model(spec)
    save_checkpoint(str(tmp_path / "own.pth"), source, spec)
    start = _frozen_run(data, tmp_path / "a", initial_checkpoint=str(tmp_path / "own.pth"))
    assert torch.equal(start["fc.weight"], source.state_dict()["fc.weight"])

    wrapped = {f"module.{k}": v for k, v in source.state_dict().items()}  # a DDP-saved file
    torch.save(wrapped, tmp_path / "ddp.pth")
    with pytest.raises(Exception, match="weights do not fit the model") as refused:
        _frozen_run(data, tmp_path / "b", initial_checkpoint=str(tmp_path / "ddp.pth"))
    assert refused.value.field == "initial_checkpoint"
    start = _frozen_run(data, tmp_path / "c", initial_checkpoint=str(tmp_path / "ddp.pth"),
                        initial_checkpoint_key_map="strip-prefix")  # fmt: skip
    assert torch.equal(start[LAYER], source.state_dict()[LAYER])

    other = timm.create_model("resnet14t", num_classes=data.num_classes, in_chans=1)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    result = _train_cli(data, tmp_path / "d", "--initial-checkpoint", str(tmp_path / "other.pth"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "other.pth: weights do not fit the model" in result.stderr
