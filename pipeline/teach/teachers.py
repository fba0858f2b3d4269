"""Loading teachers: kdcache checkpoints, published weights for a timm architecture, or a
user's own ``nn.Module`` (a factory ``module:function``), always strictly (``weights``).

Preprocessing, first found wins: the options given, the kdcache checkpoint, the timm model's
pretrained config, timm's ImageNet defaults (224 px, bicubic, crop 0.875). The teacher's class
count must equal the data's, or a class map (a teacher class id per data class) picks and orders
the teacher's logits; anything else is refused naming both counts.
"""

from dataclasses import dataclass

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from kdcache.errors import ConfigError
from kdcache.pipeline.teach.class_maps import named_class_map
from kdcache.pipeline.teach.key_maps import key_map as resolve_key_map
from kdcache.pipeline.teach.key_maps import resolve_callable
from kdcache.pipeline.teach.models import (
    ModelSpec,
    architecture_args,
    check_arch,
    create_model,
    file_sha256,
    local_copy,
    read_checkpoint_meta,
)
from kdcache.pipeline.teach.weights import adapt_stem, check_fits, load_strict, read_state_dict

FACTORY_PREFIX = "factory:"  # a factory teacher's arch in the identity: factory:module:function
EVAL_DEFAULTS = ("bilinear", 1.0)  # (interpolation, crop_pct) of teachers before these fields


@dataclass
class Teacher:
    """A teacher ready for inference, with what identifies it in a cache."""

    name: str
    model: torch.nn.Module
    spec: ModelSpec
    weights_sha256: str
    source: str
    key_map: str | None = None
    class_map: tuple[int, ...] | None = None

    def identity(self) -> dict:
        """The attrs that say which teacher made a cache (architecture, weights, key map,
        class map, preprocessing). Fields added since the first caches appear only when they
        differ from what those caches meant, so existing caches keep their identity."""
        preprocessing = {
            "resolution": self.spec.resolution,
            "in_chans": self.spec.in_chans,
            "mean": list(self.spec.mean),
            "std": list(self.spec.std),
            "interpolation": "bilinear-antialias",  # views: the plan's renderer resizes them
        }
        if (self.spec.interpolation, self.spec.crop_pct) != EVAL_DEFAULTS:
            preprocessing["eval"] = {
                "interpolation": self.spec.interpolation,
                "crop_pct": self.spec.crop_pct,
            }
        identity = {
            "name": self.name,
            "arch": self.spec.arch,
            "weights_sha256": self.weights_sha256,
            "source": self.source,
            "num_classes": self.spec.num_classes,
            "model_args": self.spec.model_args,
            "preprocessing": preprocessing,
        }
        if self.key_map:
            identity["key_map"] = self.key_map
        if self.class_map is not None:
            identity["class_map"] = list(self.class_map)
        return identity


class ClassMapped(torch.nn.Module):
    """A teacher's logits at the class map's ids, in data class order."""

    def __init__(self, model: torch.nn.Module, class_map: tuple[int, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.tensor(class_map, dtype=torch.long), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).index_select(-1, self.index)


def _fit_channels(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Per-channel statistics for ``channels`` channels (RGB statistics averaged for grey input)."""
    if len(values) == channels:
        return tuple(values)
    if channels == 1:
        return (sum(values) / len(values),)
    return tuple(values[:1]) * channels


def load_options(identity: dict) -> dict:
    """Keyword arguments of :func:`load_teacher` that rebuild the teacher of a cache identity."""
    p = identity["preprocessing"]
    arch = identity["arch"]
    factory = arch[len(FACTORY_PREFIX) :] if arch.startswith(FACTORY_PREFIX) else None
    interpolation, crop_pct = (p.get("eval") or {}).get("interpolation"), None
    if "eval" in p:
        crop_pct = p["eval"]["crop_pct"]
    return dict(
        name=identity["name"],
        arch=None if factory else arch,
        factory=factory,
        num_classes=identity["num_classes"],
        in_chans=p["in_chans"],
        resolution=p["resolution"],
        mean=tuple(p["mean"]),
        std=tuple(p["std"]),
        interpolation=interpolation,
        crop_pct=crop_pct,
        key_map=identity.get("key_map"),
        class_map=identity.get("class_map"),
    )


def load_teacher(
    location: str,
    *,
    name: str | None = None,
    arch: str | None = None,
    factory: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    resolution: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
    key_map: str | None = None,
    class_map: list[int] | tuple[int, ...] | str | None = None,
    class_names: list[str] | None = None,
    replace_classifier: bool = False,
    device: str | torch.device = "cpu",
) -> Teacher:
    """Load a teacher for inference, its weights strictly.

    A kdcache checkpoint carries its own architecture and preprocessing (``arch`` etc. must be
    left out or agree). Any other file (``.pth``/``.bin``/``.safetensors``) holds published
    weights for the timm architecture ``arch`` or for the ``nn.Module`` that ``factory``
    (``module:function``, called without arguments) returns; ``key_map`` renames the file's
    tensors first (:mod:`pipeline.teach.key_maps`), a timm stem is adapted to ``in_chans``.
    ``num_classes`` is the data's class count: the teacher's must equal it, or ``class_map``
    lists the teacher class id of each data class, or names a map made from the data's
    ``class_names`` (``imagenet``: :mod:`pipeline.teach.class_maps`). ``replace_classifier``:
    the classifier is built for ``num_classes`` and left out of the strict check."""
    path = local_copy(location)
    meta = read_checkpoint_meta(path)
    state = read_state_dict(path)
    if meta is not None:
        model, spec = _kdcache_model(location, meta, arch, in_chans, state)
        config = {}  # the checkpoint's own preprocessing
    else:
        model, spec = _published_model(
            location, arch, factory, num_classes, in_chans, replace_classifier
        )
        config = getattr(model, "pretrained_cfg", None) or {}
    if key_map:
        state = resolve_key_map(key_map)(state, model)
    load_strict(model, adapt_stem(state, model), location, replace_classifier=replace_classifier)
    given = dict(resolution=resolution, mean=mean, std=std, interpolation=interpolation,
                 crop_pct=crop_pct)  # fmt: skip
    spec = _preprocessing(spec, config, given)
    model, spec, class_map = _fit_classes(
        location, model, spec, num_classes, class_map, class_names
    )
    model.eval().requires_grad_(False).to(device)
    if torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return Teacher(name or spec.arch, model, spec, file_sha256(path), location, key_map, class_map)


def _kdcache_model(location, meta, arch, in_chans, state: dict) -> tuple:
    """The model of a kdcache checkpoint (not yet loaded) and its spec, checked against the
    options given. The spec's sizes come from the file: the model is first built on the meta
    device and its tensors compared with the file's (:func:`check_fits`), so a spec declaring a
    huge model is refused before anything is allocated."""
    spec = ModelSpec.from_dict(meta["spec"])
    spec = ModelSpec.from_dict({**spec.to_dict(), "model_args": architecture_args(spec.model_args)})
    for option, wanted, found in (
        ("arch", arch, spec.arch),
        ("in_chans", in_chans, spec.in_chans),
    ):
        if wanted is not None and wanted != found:
            raise ConfigError(
                f"{location}: checkpoint has {option}={found!r}, asked for {wanted!r}"
            )
    with torch.device("meta"):
        check_fits(create_model(spec), state, location)
    return create_model(spec), spec


def _published_model(location, arch, factory, num_classes, in_chans, replace_classifier):
    """The model published weights are for (not yet loaded) and a spec of ImageNet defaults."""
    in_chans = in_chans or 3
    if factory:
        model = resolve_callable(factory, "teacher factory")()
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                f"teacher factory {factory}: returned {type(model).__name__}, not a torch nn.Module"
            )
        arch = FACTORY_PREFIX + factory
    elif arch:
        check_arch(arch)
        kwargs = dict(in_chans=in_chans)
        if replace_classifier and num_classes is not None:
            kwargs["num_classes"] = num_classes
        model = timm.create_model(arch, **kwargs)
    else:
        raise ConfigError(
            f"{location}: not a kdcache checkpoint; published weights need a timm "
            "architecture or a teacher factory"
        )
    spec = ModelSpec(arch, 0, in_chans, 224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    return model, spec


def _preprocessing(spec: ModelSpec, config: dict, given: dict) -> ModelSpec:
    """``spec`` with the ``given`` options, else a pretrained ``config``'s values."""
    values = spec.to_dict()
    if config.get("input_size"):
        values["resolution"] = int(config["input_size"][-1])
    for key in ("mean", "std", "interpolation", "crop_pct"):
        if config.get(key) is not None:
            values[key] = config[key]
    values.update({k: v for k, v in given.items() if v is not None})
    for key in ("mean", "std"):
        values[key] = list(_fit_channels(tuple(values[key]), values["in_chans"]))
    return ModelSpec.from_dict(values)


def _output_classes(model: torch.nn.Module, spec: ModelSpec) -> int:
    """How many logits the model gives (one forward pass if it does not say)."""
    classes = getattr(model, "num_classes", None)
    if isinstance(classes, int) and classes > 0:
        return classes
    size = spec.resolution
    with torch.inference_mode():
        return int(model.eval()(torch.zeros(1, spec.in_chans, size, size)).shape[-1])


def _fit_classes(location, model, spec, num_classes, class_map, class_names) -> tuple:
    """(model, spec, class map) with the teacher's classes fitted to the data's ``num_classes``."""
    teacher_classes = spec.num_classes or _output_classes(model, spec)
    spec = ModelSpec.from_dict({**spec.to_dict(), "num_classes": teacher_classes})
    if class_map is None:
        if num_classes is not None and num_classes != teacher_classes:
            raise ConfigError(
                f"{location}: the teacher {spec.arch} has {teacher_classes} classes, the data "
                f"has {num_classes}; give a class map (the teacher class id of each data class "
                "in the data's class order, or imagenet for WordNet-id class folders)",
                field="teacher.class_map",
            )
        return model, spec, None
    if isinstance(class_map, str):
        class_map = named_class_map(class_map, list(class_names or []), teacher_classes, location)
    class_map = tuple(int(c) for c in class_map)
    if num_classes is not None and len(class_map) != num_classes:
        raise ConfigError(
            f"teacher.class_map: {len(class_map)} ids for data of {num_classes} classes",
            field="teacher.class_map",
        )
    outside = [c for c in class_map if not 0 <= c < teacher_classes]
    if outside:
        raise ConfigError(
            f"teacher.class_map: id {outside[0]} outside the teacher's {teacher_classes} classes",
            field="teacher.class_map",
        )
    spec = ModelSpec.from_dict({**spec.to_dict(), "num_classes": len(class_map)})
    return ClassMapped(model, class_map), spec, class_map
