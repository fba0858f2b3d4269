"""Feature and attention targets of a teacher, read by forward hooks during its logit forward
(one forward gives logits and every extra target; requests: :mod:`feature_request`).

- ``pre_logits``: the input of the model's classifier (``get_classifier()``; of a distilled
  DeiT's two heads, their mean input), which for timm models is
  ``forward_head(forward_features(x), pre_logits=True)`` in eval mode;
- an integer i: the output of ``feature_info[i]['module']``, which is what timm's
  ``forward_intermediates(indices=[i])`` returns (before its NCHW reshape of ViT tokens);
- a module name: that module's output (any ``nn.Module``; ``get_submodule``).

Outputs are pooled per sample: NCHW maps (``avg``: mean over H, W; ``sSxS``: adaptive average
pooling; ``none``: as they are), ViT tokens (B, N, C) (``cls``: token 0; ``avg``: mean of the
patch tokens, timm's ``avg`` pool; ``sSxS``/``none``: the patch tokens as a C x h x w map,
pooled), vectors (B, C). Attention: a forward pre-hook on ``blocks[i].attn`` recomputes the
class token's attention from its input (``qkv``, ``q_norm``/``k_norm``, ``scale``; timm's
fused attention returns no weights): softmax over all keys, the patch keys kept, heads
averaged, as the h x w grid, average-pooled to S x S. A projection (``--feature-dim``) maps
the channel axis with the cache's fixed matrix (:mod:`pipeline.cache.feature_layout`).
"""

import difflib
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from kdcache.errors import ConfigError
from kdcache.pipeline.cache import matrix_sha256, projection_matrix, projection_seed
from kdcache.pipeline.teach.feature_request import FULL, PRE_LOGITS, FeatureRequest, requests

if TYPE_CHECKING:
    from kdcache.pipeline.data import Manifest
    from kdcache.pipeline.teach.teach_config import TeachConfig, TeacherSource


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The network under a class-map wrapper (``teachers.ClassMapped``)."""
    return getattr(model, "model", model) if hasattr(model, "index") else model


class FeatureTaps:
    """Hooks collecting ``targets`` (dicts as a cache records them, or probing requests) while
    the model runs; :meth:`collect` gives name -> (B, *shape) float32 after each forward."""

    def __init__(
        self,
        model: torch.nn.Module,
        targets: list[dict],
        projections: dict[str, np.ndarray | None] | None = None,
    ):
        self.model = base_model(model)
        self.targets = targets
        self.prefix = int(getattr(self.model, "num_prefix_tokens", 0))
        self.projections = {
            name: torch.from_numpy(m) for name, m in (projections or {}).items() if m is not None
        }
        self.captured: dict[str, torch.Tensor] = {}
        self.handles = []

    def __enter__(self) -> "FeatureTaps":
        for target in self.targets:
            self.handles += self._hook(target)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _hook(self, target: dict) -> list:
        name = target["name"]
        if target["kind"] == "attention":
            attn = attention_module(self.model, target["layer"])

            def on_attention(module, args):
                self.captured[name] = cls_attention(module, args[0], self.prefix)

            return [attn.register_forward_pre_hook(on_attention)]
        if target["layer"] == PRE_LOGITS:
            heads = classifier(self.model)
            heads = heads if isinstance(heads, tuple) else (heads,)  # DeiT: (head, head_dist)
            inputs = [None] * len(heads)

            def on_head(index: int):
                def hook(module, args):
                    inputs[index] = args[0]
                    if index == len(heads) - 1:  # the heads' mean input, as timm's pre_logits
                        self.captured[name] = sum(inputs) / len(heads) if index else inputs[0]

                return hook

            return [head.register_forward_pre_hook(on_head(i)) for i, head in enumerate(heads)]

        def on_output(module, args, output):
            self.captured[name] = output

        module = self.model.get_submodule(module_name(self.model, target["layer"]))
        return [module.register_forward_hook(on_output)]

    def collect(self) -> dict[str, torch.Tensor]:
        """The last forward's targets, pooled and projected, float32 on the model's device."""
        found = {}
        for target in self.targets:
            name = target["name"]
            if name not in self.captured:
                raise ConfigError(f"teacher target {name}: its layer did not run in the forward")
            value = self.captured.pop(name).float()
            if target["kind"] == "attention":
                found[name] = pool_attention(value, target["pool"])
                continue
            value = pool_output(value, target["pool"], self.prefix, name)
            if name in self.projections:
                matrix = self.projections[name].to(value.device)
                value = torch.einsum("bc...,cd->bd...", value, matrix)
            found[name] = value
        return found


def classifier(model: torch.nn.Module) -> torch.nn.Module:
    if not hasattr(model, "get_classifier"):
        raise ConfigError(
            f"teacher {type(model).__name__}: pre_logits needs a timm model (get_classifier); "
            "name a module instead"
        )
    return model.get_classifier()


def module_name(model: torch.nn.Module, layer: str) -> str:
    """The module a layer names: an integer is ``feature_info[i]['module']``."""
    if layer.lstrip("-").isdigit():
        info = getattr(model, "feature_info", None)
        if not info:
            raise ConfigError(
                f"teacher {type(model).__name__}: layer {layer} is a forward_intermediates "
                "index, but the model has no feature_info; name a module instead"
            )
        try:
            return info[int(layer)]["module"]
        except IndexError:
            raise ConfigError(
                f"teacher {type(model).__name__}: layer {layer} outside its "
                f"{len(info)} feature_info entries"
            ) from None
    names = [n for n, _ in model.named_modules() if n]
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=3)
        raise ConfigError(
            f"teacher {type(model).__name__}: no module {layer!r} (closest: {', '.join(close)})"
        )
    return layer


def attention_module(model: torch.nn.Module, block: str) -> torch.nn.Module:
    blocks = getattr(model, "blocks", None)
    try:
        attn = blocks[int(block)].attn
    except (TypeError, IndexError, AttributeError):
        raise ConfigError(
            f"teacher {type(model).__name__}: attention needs a ViT with blocks[{block}].attn"
        ) from None
    if not all(hasattr(attn, a) for a in ("qkv", "num_heads", "head_dim", "scale")):
        raise ConfigError(f"teacher block {block}: its attention has no qkv projection to read")
    return attn


def cls_attention(attn: torch.nn.Module, x: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, patches): the class token's attention to each patch token, heads averaged."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return weights[:, :, 0, prefix:].mean(dim=1)


def pool_attention(weights: torch.Tensor, pool: str) -> torch.Tensor:
    side = math.isqrt(weights.shape[1])
    grid = weights.reshape(-1, 1, side, side)
    size = side if pool == FULL else int(pool[1:].split("x")[0])
    return F.adaptive_avg_pool2d(grid, size)[:, 0]


def pool_output(value: torch.Tensor, pool: str, prefix: int, name: str) -> torch.Tensor:
    """One layer's output (B, ...) pooled per sample (see the module's docstring)."""
    if value.ndim == 3:  # ViT tokens (B, N, C)
        if pool == "cls":
            if prefix < 1:
                raise ConfigError(f"teacher target {name}: the model has no class token")
            return value[:, 0]
        patches = value[:, prefix:]
        if pool == "avg":
            return patches.mean(dim=1)
        side = math.isqrt(patches.shape[1])
        value = patches.transpose(1, 2).reshape(value.shape[0], -1, side, side)
    if value.ndim == 4:
        if pool == "avg":
            return value.mean(dim=(2, 3))
        if pool.startswith("s"):
            return F.adaptive_avg_pool2d(value, int(pool[1:].split("x")[0]))
        if pool == "none":
            return value
    if value.ndim == 2 and pool in ("none", "avg"):
        return value
    raise ConfigError(
        f"teacher target {name}: pool {pool} does not fit its output {list(value.shape)}"
    )


def resolve_targets(
    model: torch.nn.Module,
    resolution: int,
    in_chans: int,
    requests: list[FeatureRequest],
    feature_dim: int | None,
    dtype: str,
) -> list[dict]:
    """The targets' records (as a cache's teacher identity holds them), shapes found by one
    forward of a zero image; ``feature_dim`` adds each feature's projection."""
    if feature_dim is not None and feature_dim < 1:
        raise ConfigError(f"feature_dim must be at least 1, got {feature_dim}")
    targets = [{"name": r.name, "kind": r.kind, "layer": r.layer, "pool": r.pool} for r in requests]
    device = next(model.parameters()).device
    with torch.inference_mode(), FeatureTaps(model, targets) as taps:
        model(torch.zeros(1, in_chans, resolution, resolution, device=device))
        shapes = {name: tuple(v.shape[1:]) for name, v in taps.collect().items()}
    for target in targets:
        shape = shapes[target["name"]]
        target |= {"shape": list(shape), "dtype": dtype, "projection": None}
        if target["kind"] == "feature" and feature_dim is not None:
            seed = projection_seed(target["name"])
            matrix = projection_matrix(seed, shape[0], feature_dim)
            target["shape"] = [feature_dim, *shape[1:]]
            target["projection"] = {
                "kind": "gaussian-pcg64", "seed": seed, "in_dim": shape[0], "dim": feature_dim,
                "sha256": matrix_sha256(matrix),
            }  # fmt: skip
    return targets


def teacher_identity(source: "TeacherSource", manifest: "Manifest", config: "TeachConfig") -> dict:
    """A teacher's identity in the cache, with its feature and attention targets if asked."""
    asked = requests(config.features, config.attention)  # malformed: refused before loading
    teacher = source.load(manifest)
    identity = teacher.identity()
    if asked:
        spec = teacher.spec
        identity["features"] = resolve_targets(
            teacher.model, spec.resolution, spec.in_chans, asked, config.feature_dim,
            config.target_dtype,
        )  # fmt: skip
    return identity
