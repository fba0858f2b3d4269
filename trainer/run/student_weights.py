"""Where a student's weights start: random, timm's pretrained weights, or a checkpoint.

Pretrained weights come from a file the user names or from the local Hugging Face cache
(timm's ``hf_hub_id`` for the architecture); nothing is downloaded. They are loaded the way
timm fine-tunes (its ``load_pretrained``: a classifier for another class count is left new,
RGB stem weights adapted to the data's channels). An initial checkpoint (a kdcache checkpoint or
any state dict) is loaded strictly, renamed first by a key map like a teacher's.
"""

import torch

from kdcache.errors import ConfigError
from kdcache.pipeline.teach import (
    ModelSpec,
    adapt_stem,
    create_model,
    load_strict,
    local_copy,
    read_state_dict,
)
from kdcache.pipeline.teach import key_map as resolve_key_map

_HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm reads from a hub repo


def cached_pretrained_file(arch: str) -> str:
    """The local Hugging Face cache's copy of timm's pretrained weights for ``arch``."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise ConfigError(
            f"pretrained: timm has no Hugging Face weights for {arch}; give pretrained_path "
            "(a weights file)",
            field="pretrained",
        )
    for filename in _HUB_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    raise ConfigError(
        f"pretrained: no local copy of {repo} ({' or '.join(_HUB_FILES)}) in the Hugging Face "
        "cache and nothing is downloaded; fetch it there first or give pretrained_path",
        field="pretrained",
    )


def pretrained_student(spec: ModelSpec, location: str | None) -> torch.nn.Module:
    """The student built by timm with pretrained weights from ``location`` (a weights file),
    else from the Hugging Face cache."""
    path = local_copy(location) if location else cached_pretrained_file(spec.arch)
    state = read_state_dict(path)  # tensors only, never a pickle that runs code
    try:
        net = create_model(spec, pretrained=True, pretrained_cfg_overlay={"state_dict": state})
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0][:200]
        raise ConfigError(
            f"{location or path}: pretrained weights do not fit {spec.arch} ({first})",
            field="pretrained_path" if location else "pretrained",
        ) from None
    cfg = getattr(net, "pretrained_cfg", None)
    if isinstance(cfg, dict):
        cfg.pop("state_dict", None)  # the weights are in the model; keep no second copy
    return net


def load_initial_checkpoint(net: torch.nn.Module, location: str, key_map: str | None) -> None:
    """Load ``location``'s weights into ``net`` strictly, renamed by ``key_map`` first."""
    state = read_state_dict(local_copy(location))
    if key_map:
        state = resolve_key_map(key_map)(state, net)
    try:
        load_strict(net, adapt_stem(state, net), location)
    except ConfigError as error:
        raise ConfigError(str(error), field="initial_checkpoint") from None
