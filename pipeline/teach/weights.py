"""Strict weight loading: every tensor of the model comes from the file, or loading is refused.

The one exception is a classifier the caller replaces on purpose (``replace_classifier``):
its tensors may be missing from the file or of another shape, and stay freshly initialised.
A refusal is one line with the counts and the first few missing, unexpected and mismatched
names, so a file that does not fit never gives a silently random teacher.
"""

import torch
from timm.models import adapt_input_conv

from kdcache.errors import ConfigError

SHOWN = 3  # names listed per kind in a refusal
UNSTORED_SLACK = 64 << 20  # bytes a model may hold beyond its stored tensors (index buffers)
KEY_MAP_HINT = (
    "give a key map that renames them (built in: strip-prefix, positional; or module:function)"
)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (``.safetensors``, or a torch file holding a state dict,
    possibly under ``model``/``state_dict``/``model_state``), in file order."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return dict(load_file(path))
    payload = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_state"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
    if not isinstance(payload, dict) or not all(torch.is_tensor(v) for v in payload.values()):
        raise ConfigError(f"{path}: not a state dict (a mapping of names to tensors)")
    return dict(payload)


def classifier_keys(model: torch.nn.Module) -> set[str]:
    """State-dict names of the model's classifier (timm's ``pretrained_cfg['classifier']``)."""
    heads = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return {k for k in model.state_dict() if any(k.startswith(f"{h}.") for h in heads)}


def adapt_stem(state: dict, model: torch.nn.Module) -> dict:
    """``state`` with a timm model's first convolution summed/tiled to the model's input
    channels (timm's ``adapt_input_conv``: RGB weights for grey data)."""
    first = getattr(model, "pretrained_cfg", {}).get("first_conv")
    key = f"{first}.weight" if isinstance(first, str) else None
    expected = model.state_dict().get(key) if key else None
    if expected is None or key not in state or state[key].shape[1] == expected.shape[1]:
        return state
    return {**state, key: adapt_input_conv(expected.shape[1], state[key])}


def check_fits(model: torch.nn.Module, state: dict, location: str) -> None:
    """Refuse, in one line, a model (built on the meta device from a file's declared sizes)
    whose tensors do not match the file's by name and shape, or whose buffers the file does not
    hold outgrow the file's tensors (:data:`UNSTORED_SLACK`): what the file declares never
    allocates more than the file holds."""
    hint = "its spec (arch, model_args, resolution) does not describe its tensors"
    check_strict(model, adapt_stem(state, model), location, hint=hint)
    stored = sum(t.numel() * t.element_size() for t in state.values())
    tensors = [*model.parameters(), *model.buffers()]
    declared = sum(t.numel() * t.element_size() for t in tensors)
    if declared > stored + UNSTORED_SLACK:
        raise ConfigError(
            f"{location}: the checkpoint's model would take {declared / 2**20:.0f} MiB, its "
            f"tensors hold {stored / 2**20:.0f} MiB (field model_args)"
        )


def check_strict(
    model: torch.nn.Module,
    state: dict,
    location: str,
    exempt: set[str] = frozenset(),
    hint: str = KEY_MAP_HINT,
) -> None:
    """Refuse in one line (ending in ``hint``) unless every tensor of ``model`` (but
    ``exempt``) matches ``state`` by name and shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and k not in exempt]
    unexpected = [k for k in state if k not in expected and k not in exempt]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and k not in exempt and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(names)} {kind} (e.g. {', '.join(names[:SHOWN])})"
            for kind, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", mismatched),
            )
            if names
        ]
        raise ConfigError(
            f"{location}: weights do not fit the model ({len(state)} tensors in the file, "
            f"{len(expected)} in the model): {'; '.join(parts)}; {hint}",
            field="teacher.key_map" if hint == KEY_MAP_HINT else None,
        )


def load_strict(
    model: torch.nn.Module, state: dict, location: str, *, replace_classifier: bool = False
) -> None:
    """Load ``state`` into ``model``; refuse in one line unless every tensor matches by name
    and shape (a ``replace_classifier`` model's classifier excepted)."""
    expected = model.state_dict()
    exempt = classifier_keys(model) if replace_classifier else set()
    check_strict(model, state, location, exempt)
    usable = {k: v for k, v in state.items() if k not in exempt or v.shape == expected[k].shape}
    model.load_state_dict(usable, strict=not exempt)
