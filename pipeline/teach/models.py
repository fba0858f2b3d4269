"""timm models by name, and the kdcache checkpoint format that trainer writes and teachers load.

A kdcache checkpoint is a ``torch.save`` dict: ``{"model": state_dict, "kdcache": meta}``,
where ``meta`` holds the :class:`ModelSpec` (architecture, classes, channels, model kwargs,
input resolution, normalisation) plus whatever the writer adds (epoch, metrics).
timm's own ``load_checkpoint`` reads the ``model`` key, so the files also load in plain timm.
"""

import difflib
import hashlib
import io
import os
from dataclasses import asdict, dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights never come from a hub at run time

import fsspec  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

from kdcache.errors import ConfigError, WeightsError  # noqa: E402
from kdcache.pipeline.data import storage, urls  # noqa: E402

CHECKPOINT_FORMAT = "kdcache-checkpoint/1"
MIN_RESOLUTION = 16
# keyword arguments of timm models that change training, not the network a checkpoint holds
TRAINING_ONLY_ARGS = frozenset(
    {"drop_rate", "drop_path_rate", "drop_block_rate", "drop_connect_rate", "attn_drop_rate",
     "proj_drop_rate", "pos_drop_rate", "patch_drop_rate", "pretrained", "checkpoint_path",
     "pretrained_cfg", "pretrained_cfg_overlay"}
)  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and feed it: timm name, sizes and preprocessing."""

    arch: str
    num_classes: int
    in_chans: int
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_args: dict = field(default_factory=dict)
    # whole-image (evaluation) inputs: shorter side to resolution / crop_pct, centre crop;
    # the defaults are what checkpoints written before these fields meant (the whole image)
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> "ModelSpec":
        return cls(**{**values, "mean": tuple(values["mean"]), "std": tuple(values["std"])})


def architecture_args(model_args: dict) -> dict:
    """``model_args`` without the keywords that only change training (dropout rates, ...)."""
    return {k: v for k, v in model_args.items() if k not in TRAINING_ONLY_ARGS}


def check_arch(arch: str) -> None:
    """Refuse, in one line naming the closest timm names, an architecture timm does not have."""
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ConfigError(f"teacher architecture {arch!r} is not a timm model{hint}")


def create_model(spec: ModelSpec, **timm_kwargs) -> torch.nn.Module:
    """``timm.create_model`` for the spec; ViT-style models get ``img_size`` = resolution,
    which must be a multiple of their patch size (timm would silently drop the remainder)."""
    check_arch(spec.arch)
    if spec.resolution < MIN_RESOLUTION:
        raise ConfigError(
            f"resolution {spec.resolution}: must be at least {MIN_RESOLUTION} px "
            "(the model's input size)"
        )
    kwargs = dict(num_classes=spec.num_classes, in_chans=spec.in_chans, **spec.model_args)
    kwargs.update(timm_kwargs)
    try:
        model = timm.create_model(spec.arch, img_size=spec.resolution, **kwargs)
    except TypeError as error:
        if "img_size" not in str(error):
            raise
        model = timm.create_model(spec.arch, **kwargs)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, tuple | list) else patch
    if isinstance(patch, int) and spec.resolution % patch:
        fits = (spec.resolution // patch + 1) * patch
        raise ConfigError(
            f"resolution {spec.resolution} px does not fit {spec.arch}'s patch size {patch}: "
            f"use a multiple of {patch} (e.g. {fits}) or another patch_size model arg"
        )
    return model


def save_checkpoint(location: str, model: torch.nn.Module, spec: ModelSpec, **extra) -> None:
    """Write a kdcache checkpoint whole: temp file and rename locally, write then check the
    size on object stores (:func:`urls.write_bytes`)."""
    payload = {
        "model": model.state_dict(),
        "kdcache": {"format": CHECKPOINT_FORMAT, "spec": spec.to_dict(), **extra},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    urls.write_bytes(location, buffer.getbuffer())


def read_checkpoint_meta(path: str) -> dict | None:
    """The ``kdcache`` metadata of a checkpoint, or None for a plain weights file."""
    if path.endswith(".safetensors"):
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = payload.get("kdcache") if isinstance(payload, dict) else None
    if meta is not None and meta.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(
            f"{path}: checkpoint format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}",
            field="teacher.location",
        )
    return meta


def local_copy(location: str) -> str:
    """A local file path for ``location``; remote URLs are fetched once into fsspec's cache."""
    path = urls.local_path(location)
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{location}: no such checkpoint file")
        return path
    protocol = location.split("://", 1)[0]  # its storage options go to the remote layer
    return fsspec.open_local(
        f"simplecache::{location}", **{protocol: storage.options_for(location)}
    )


def file_sha256(path: str) -> str:
    """sha256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
