"""Where the teachers are (``TeacherSource``) and the options of one teacher pass, each with
its default and help (``kdcache teach --help`` is generated from these fields)."""

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from kdcache._options import option
from kdcache.pipeline.data import StorageOptions, storage
from kdcache.pipeline.teach.feature_request import ATTENTION_HELP, FEATURE_DIM_HELP, FEATURES_HELP
from kdcache.pipeline.teach.host_memory import HOST_ALLOCATORS
from kdcache.pipeline.views import ViewPlan, max_pixels_option

if TYPE_CHECKING:
    import torch

    from kdcache.pipeline.data import Manifest
    from kdcache.pipeline.teach.teachers import Teacher

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TARGET_DTYPES = ("fp16", "q8", "q6")  # as pipeline.cache.quantize (teach --help stays light)
RAY = "Ray job"


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher's weights are and how to build and feed it: ``arch`` (a timm name) or
    ``factory`` (``module:function``) for published weights, a key map, a class map, and
    preprocessing that overrides the checkpoint's or the pretrained config's (see
    :func:`~pipeline.teach.teachers.load_teacher`; the CLI's options: ``teacher_options``)."""

    location: str
    name: str | None = None
    arch: str | None = None
    resolution: int | None = None
    factory: str | None = None  # module:function returning the teacher's nn.Module
    key_map: str | None = None  # strip-prefix, positional or module:function(state, model)
    class_map: tuple[int, ...] | None = None  # the teacher class id of each data class
    mean: tuple[float, ...] | None = None  # per-channel mean on [0, 1] of the teacher's inputs
    std: tuple[float, ...] | None = None  # per-channel std on [0, 1] of the teacher's inputs
    interpolation: str | None = None  # the teacher's whole-image resize, e.g. bicubic
    crop_pct: float | None = None  # the teacher's whole-image centre-crop fraction

    def load(self, manifest: "Manifest", device: "str | torch.device" = "cpu") -> "Teacher":
        """The teacher, checked against the manifest's classes and sized for its channels."""
        from kdcache.pipeline.teach.teachers import load_teacher

        options = {k: v for k, v in asdict(self).items() if k != "location"}
        return load_teacher(
            self.location,
            num_classes=manifest.num_classes,
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
    plan: ViewPlan = field(default_factory=ViewPlan)
    topk: int = option(10, help="logits kept per view")
    samples: int = option(
        0,
        metavar="D",
        help="also draw D class ids per view from the teacher's softmax, for sampled "
        "distillation (RS-KD; train --targets sampled)",
    )
    target_dtype: str = option(
        "fp16",
        choices=TARGET_DTYPES,
        help="how targets are stored: fp16 logits; q8 (8-bit logits relative to the view's "
        "max with a per-view scale, bit-packed class ids); or q6 (the ids as a set, 6-bit "
        "logits, 8-bit scale and tail: 19 B at top-10 of 1000); inspect reports q8/q6's KL",
    )
    features: tuple[str, ...] = option((), metavar="LAYER[:POOL]", help=FEATURES_HELP)
    attention: tuple[str, ...] = option((), metavar="BLOCK[:SxS]", help=ATTENTION_HELP)
    feature_dim: int | None = option(None, metavar="D", help=FEATURE_DIM_HELP)
    splits: list[str] = option(factory=lambda: ["train"], help="splits to cache")
    batch_size: int = option(256, help="inference batch")
    block_rows: int = option(
        256,
        help="rows an actor decodes at once, rounded to whole batches; bounds its memory "
        "whatever the shard size",
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
    progress: bool = option(True, flag="--quiet", help="no progress bar")
    storage_options: StorageOptions | None = storage.storage_option()
    dry_run: bool = option(
        False, help="print the cache's objects, bytes and read requests/s; run no teacher"
    )
    student_rate: float = option(
        10000.0, metavar="IMG_PER_S", help="with --dry-run: the student's assumed images/s"
    )
    run_id: str | None = None  # set by run_teach: the run lock this run holds
