"""Feature and attention distillation: learnable adapters from named student layers to the
teacher's cached (or online) feature targets, and the losses between them.

For a teacher target of shape (D,) the student layer's output is pooled to a vector (``avg``;
``pre_logits`` as it is) and mapped by a linear adapter (none when the sizes already agree, as
timm's ``FeatureDistillationTask``); for a map (D, S, S) a 1x1 convolution maps the student's
NCHW output (ViT tokens: the patch tokens as a map) to D channels, then it is resized to S x S
(adaptive average pooling when larger, bilinear when smaller). Losses: ``mse`` and
``smooth_l1`` (means over every element, as ``torch.nn.functional``'s), ``cosine`` (1 - cosine
similarity of the flattened vectors, mean over the batch).

Attention targets (S, S) are matched by a student map: ``attention:B`` (a ViT student's own
class-token attention of block B, as the teacher job computes it) or a layer's activation map
(the mean over channels of the squared activations, Zagoruyko & Komodakis), resized to S x S.
Both maps are normalised to sum 1; ``kl`` is KL(teacher || student) summed over the map and
averaged over the batch, ``mse`` the mean squared difference of the normalised maps.
"""

import torch
import torch.nn.functional as F

from kdcache.errors import ConfigError
from kdcache.pipeline.cache import slug
from kdcache.pipeline.teach import FeatureTaps
from kdcache.trainer.kd.modes import ATTENTION_LOSSES, FEATURE_LOSSES

EPS = 1e-8
ATTENTION = "attention:"


class FeatureAlignment(torch.nn.Module):
    """The adapters (parameters to optimise and checkpoint) and losses of ``targets`` (a
    cache's target records) for a student; ``student_layers`` maps a target name to the
    student layer it learns from (default: ``pre_logits`` for vectors, the student's last
    ``feature_info`` module for maps and attention). The adapters' initial weights come from
    ``seed`` alone (not the global RNG, which loading an online teacher draws from)."""

    def __init__(
        self,
        student: torch.nn.Module,
        targets: list[dict],
        *,
        student_layers: dict[str, str] | None = None,
        feature_loss: str = "mse",
        attention_loss: str = "kl",
        resolution: int,
        in_chans: int,
        seed: int = 0,
    ):
        super().__init__()
        if feature_loss not in FEATURE_LOSSES:
            raise ConfigError(f"feature loss must be one of {FEATURE_LOSSES}, got {feature_loss!r}")
        if attention_loss not in ATTENTION_LOSSES:
            raise ConfigError(
                f"attention loss must be one of {ATTENTION_LOSSES}, got {attention_loss!r}"
            )
        layers = dict(student_layers or {})
        unknown = sorted(set(layers) - {t["name"] for t in targets})
        if unknown:
            raise ConfigError(
                f"student layers for {unknown}: no such teacher targets "
                f"(the teacher's: {[t['name'] for t in targets]})"
            )
        self.targets = targets
        self.feature_loss, self.attention_loss = feature_loss, attention_loss
        self.taps_targets = [_student_tap(student, t, layers.get(t["name"])) for t in targets]
        shapes = _probe(student, self.taps_targets, resolution, in_chans)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.adapters = torch.nn.ModuleDict(
                {slug(t["name"]): _adapter(t, shapes[t["name"]]) for t in targets}
            )

    def taps(self, student: torch.nn.Module) -> FeatureTaps:
        """The hooks that capture the student's layers during its forward (a context)."""
        return FeatureTaps(student, self.taps_targets)

    def forward(
        self, captured: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(feature loss mean, attention loss mean) as parts ``feat`` and ``attn`` (zero where
        there is no target of that kind), from the student's captured layers and the
        teacher's targets (name -> (B, *shape))."""
        terms = {"feature": [], "attention": []}
        for target in self.targets:
            name = target["name"]
            wanted = teacher[name].float()
            student = self.adapt(name, captured[name])
            if target["kind"] == "attention":
                terms["attention"].append(attention_distance(student, wanted, self.attention_loss))
            else:
                terms["feature"].append(feature_distance(student, wanted, self.feature_loss))
        zero = next(iter(captured.values())).new_zeros(())
        feat = torch.stack(terms["feature"]).mean() if terms["feature"] else zero
        attn = torch.stack(terms["attention"]).mean() if terms["attention"] else zero
        return feat, attn

    def adapt(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """A captured student output mapped to the teacher target's shape."""
        target = next(t for t in self.targets if t["name"] == name)
        shape = target["shape"]
        if target["kind"] == "attention":
            if value.ndim == 4:  # an activation map
                value = value.pow(2).mean(dim=1)
            return _resize(value[:, None], shape[-1])[:, 0]
        value = self.adapters[slug(name)](value)
        return value if len(shape) == 1 else _resize(value, shape[-1])


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "mse":
        return F.mse_loss(student, teacher)
    if loss == "smooth_l1":
        return F.smooth_l1_loss(student, teacher)
    return (1 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1)).mean()


def attention_distance(student: torch.Tensor, teacher: torch.Tensor, loss: str) -> torch.Tensor:
    p_s, p_t = _normalised(student), _normalised(teacher)
    if loss == "mse":
        return F.mse_loss(p_s, p_t)
    return (p_t * (torch.log(p_t + EPS) - torch.log(p_s + EPS))).sum(dim=1).mean()


def _normalised(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1).clamp_min(0)
    return flat / flat.sum(dim=1, keepdim=True).clamp_min(EPS)


def _resize(maps: torch.Tensor, size: int) -> torch.Tensor:
    if maps.shape[-1] >= size:
        return F.adaptive_avg_pool2d(maps, size)
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


def _student_tap(student: torch.nn.Module, target: dict, layer: str | None) -> dict:
    """What to capture of the student for one teacher target (a FeatureTaps record)."""
    vector = target["kind"] == "feature" and len(target["shape"]) == 1
    if layer is None:
        layer = "pre_logits" if vector else _last_stage(student)
    if layer.startswith(ATTENTION):
        if target["kind"] != "attention":
            raise ConfigError(f"student layer {layer}: attention maps match attention targets")
        return {"name": target["name"], "kind": "attention", "layer": layer[len(ATTENTION) :],
                "pool": target["pool"]}  # fmt: skip
    pool = "none" if layer == "pre_logits" or not vector else "avg"
    return {"name": target["name"], "kind": "feature", "layer": layer, "pool": pool}


def _last_stage(student: torch.nn.Module) -> str:
    info = getattr(student, "feature_info", None)
    if not info:
        raise ConfigError(
            f"student {type(student).__name__}: name the layer of each map target "
            "(student_layers TARGET=LAYER)"
        )
    return info[-1]["module"]


def _probe(student: torch.nn.Module, taps: list[dict], resolution: int, in_chans: int) -> dict:
    """The student's captured shapes (per sample), from one forward of a zero image."""
    device = next(student.parameters()).device
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad(), FeatureTaps(student, taps) as tap:
            student(torch.zeros(1, in_chans, resolution, resolution, device=device))
            return {name: tuple(v.shape[1:]) for name, v in tap.collect().items()}
    finally:
        student.train(was_training)


def _adapter(target: dict, found: tuple[int, ...]) -> torch.nn.Module:
    """Linear (vectors) or 1x1 convolution (maps) from the student's channels to the target's."""
    shape = target["shape"]
    if target["kind"] == "attention":
        return torch.nn.Identity()
    if len(shape) == 1:
        if len(found) != 1:
            raise ConfigError(
                f"feature {target['name']}: student output {list(found)} is no vector"
            )
        return torch.nn.Identity() if found[0] == shape[0] else torch.nn.Linear(found[0], shape[0])
    if len(found) != 3:
        raise ConfigError(f"feature {target['name']}: student output {list(found)} is no map")
    return torch.nn.Conv2d(found[0], shape[0], kernel_size=1)
