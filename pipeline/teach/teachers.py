"""Loading teachers: kdcache checkpoints, or published timm weights from a local file."""

from dataclasses import dataclass

import torch

from kdcache.pipeline.teach.models import (
    ModelSpec,
    create_model,
    file_sha256,
    local_copy,
    read_checkpoint_meta,
)


@dataclass
class Teacher:
    """A teacher ready for inference, with what identifies it in a cache."""

    name: str
    model: torch.nn.Module
    spec: ModelSpec
    weights_sha256: str
    source: str

    def identity(self) -> dict:
        """The attrs that say which teacher made a cache (architecture, weights, preprocessing)."""
        return {
            "name": self.name,
            "arch": self.spec.arch,
            "weights_sha256": self.weights_sha256,
            "source": self.source,
            "num_classes": self.spec.num_classes,
            "model_args": self.spec.model_args,
            "preprocessing": {
                "resolution": self.spec.resolution,
                "in_chans": self.spec.in_chans,
                "mean": list(self.spec.mean),
                "std": list(self.spec.std),
                "interpolation": "bilinear-antialias",
            },
        }


def _fit_channels(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Per-channel statistics for ``channels`` channels (RGB statistics averaged for grey input)."""
    if len(values) == channels:
        return tuple(values)
    if channels == 1:
        return (sum(values) / len(values),)
    return tuple(values[:1]) * channels


def load_teacher(
    location: str,
    *,
    name: str | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    resolution: int | None = None,
    device: str | torch.device = "cpu",
) -> Teacher:
    """Load a teacher for inference.

    A kdcache checkpoint carries its own architecture and preprocessing (``arch`` etc. must be
    left out or agree). Any other file is treated as published timm weights for ``arch``
    (``.pth``/``.bin``/``.safetensors``): timm adapts the stem to ``in_chans`` and drops a
    classifier of another size, and mean/std come from the model's pretrained config.
    """
    path = local_copy(location)
    meta = read_checkpoint_meta(path)
    if meta is not None:
        spec = ModelSpec.from_dict(meta["spec"])
        for option, wanted, found in (
            ("arch", arch, spec.arch),
            ("num_classes", num_classes, spec.num_classes),
            ("in_chans", in_chans, spec.in_chans),
        ):
            if wanted is not None and wanted != found:
                raise ValueError(
                    f"{location}: checkpoint has {option}={found!r}, asked for {wanted!r}"
                )
        if resolution is not None:
            spec = ModelSpec.from_dict({**spec.to_dict(), "resolution": resolution})
        model = create_model(spec, checkpoint_path=path)
    else:
        if arch is None or num_classes is None or in_chans is None:
            raise ValueError(
                f"{location}: not a kdcache checkpoint; published weights need "
                "--teacher-arch, and the dataset's classes and channels"
            )
        model = create_model(
            ModelSpec(arch, num_classes, in_chans, resolution or 224, (0.0,), (1.0,)),
            pretrained=True,
            pretrained_cfg_overlay={"file": path},
        )
        config = model.pretrained_cfg
        spec = ModelSpec(
            arch=arch,
            num_classes=num_classes,
            in_chans=in_chans,
            resolution=resolution or int(config["input_size"][-1]),
            mean=_fit_channels(tuple(config["mean"]), in_chans),
            std=_fit_channels(tuple(config["std"]), in_chans),
        )
    model.eval().requires_grad_(False).to(device)
    if torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return Teacher(
        name=name or spec.arch,
        model=model,
        spec=spec,
        weights_sha256=file_sha256(path),
        source=location,
    )
