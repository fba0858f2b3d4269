"""Test accuracy of a student: the combined prediction, and each head of a distilled ViT."""

from collections.abc import Callable

import torch
from timm.data import DEFAULT_CROP_PCT, resolve_data_config

from kdcache.pipeline.data import Manifest
from kdcache.pipeline.views import normalize
from kdcache.trainer.data import EvalViews, make_loader


@torch.inference_mode()
def count_correct(
    model: torch.nn.Module, loader, device: torch.device, prepare: Callable
) -> dict[str, int]:
    """Correct top-1 predictions over the loader (``total``: images seen) and correct top-5
    ones (``top5``: the label among the five highest); ``prepare`` normalises a batch already
    on the device. The model is evaluated in eval mode and left in the mode it was in.

    ``acc`` is the model's eval-mode prediction. For a DeiT student (``head_dist``) also each
    head alone (``acc_cls``, ``acc_dist``); its combined prediction is the argmax of the mean
    of the two heads' logits (pre-softmax), as timm's ``VisionTransformerDistilled`` and DeiT's
    released code do at inference; the DeiT paper's text speaks of adding the two heads'
    softmax outputs, which can pick another class when the heads disagree."""
    was_training = model.training
    model.eval()
    two_heads = hasattr(model, "head_dist")
    correct = dict.fromkeys(("acc", "acc_cls", "acc_dist") if two_heads else ("acc",), 0)
    correct["top5"] = 0
    total = 0
    try:
        for images, labels in loader:
            images = prepare(images.to(device, non_blocking=True))
            labels = labels.to(device, non_blocking=True)
            if two_heads:
                features = model.forward_features(images)
                class_logits = model.head(features[:, 0])
                dist_logits = model.head_dist(features[:, 1])
                combined = (class_logits + dist_logits) / 2
                correct["acc_cls"] += (class_logits.argmax(-1) == labels).sum().item()
                correct["acc_dist"] += (dist_logits.argmax(-1) == labels).sum().item()
            else:
                combined = model(images)
            correct["acc"] += (combined.argmax(-1) == labels).sum().item()
            top = combined.topk(min(5, combined.shape[-1]), dim=-1).indices
            correct["top5"] += (top == labels[:, None]).any(-1).sum().item()
            total += labels.numel()
    finally:
        model.train(was_training)
    return {**correct, "total": total}


def accuracy(counts: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Percentages from :func:`count_correct`'s counts (summed over ranks)."""
    total = max(counts["total"], 1)
    return {f"{prefix}{k}": 100.0 * v / total for k, v in counts.items() if k != "total"}


def eval_preprocessing(
    model: torch.nn.Module,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    crop_mode: str | None = None,
) -> dict:
    """How whole images are fed to ``model`` at evaluation, timm's way: the values given, else
    the model's pretrained config (``resolve_data_config``), else timm's defaults (crop 0.875,
    bicubic, centre crop)."""
    config = resolve_data_config({}, model=model)
    return dict(
        crop_pct=crop_pct or config.get("crop_pct") or DEFAULT_CROP_PCT,
        interpolation=interpolation or config.get("interpolation") or "bicubic",
        crop_mode=crop_mode or config.get("crop_mode") or "center",
    )


def evaluate_model(
    model: torch.nn.Module,
    data: str,
    *,
    resolution: int,
    split: str = "test",
    device: str | torch.device | None = None,
    workers: int = 2,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    crop_mode: str | None = None,
) -> dict[str, float]:
    """Top-1 (``acc``) and top-5 (``top5``) accuracy (%) of ``model`` on a split of the
    manifest at ``data``, evaluated as ``kdcache train`` does: each whole image resized and
    centre-cropped to ``resolution`` (:func:`eval_preprocessing`), the dataset's
    normalisation. ``device``: default the model's; the model is left in the mode it was in."""
    manifest = Manifest.read(data)
    preprocessing = eval_preprocessing(model, crop_pct, interpolation, crop_mode)
    views = EvalViews(manifest, resolution=resolution, split=split, **preprocessing)
    loader = make_loader(views, 256, workers, False)
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    device = torch.device(device)

    def prepare(images: torch.Tensor) -> torch.Tensor:
        return normalize(images, manifest.pixel_mean, manifest.pixel_std)

    return accuracy(count_correct(model, loader, device, prepare))
