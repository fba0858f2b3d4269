"""The one timing harness every benchmark uses, and the options they share.

A benchmark names its modes (each a function of the repeat index returning its figures, e.g.
``{"images_per_s": 512.0}``); :func:`interleave` runs ``--warmup`` untimed rounds, then
``--repeats`` rounds in which the modes alternate (ABCABC...), and keeps every figure of every
run. The JSON holds, beside the figures (per mode: all runs, median, min and max), the order
the runs happened in and the full configuration: the benchmark's options and sizes, the
machine (CPU count and model, load average at start and end) and the versions of Python,
torch, timm, Ray and kdcache. Imports no torch: the CLI loads benchmark modules lazily.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata

from kdcache.errors import ConfigError

STAMP = "kdcache-bench.json"  # what a benchmark's work folder holds about the run that made it
PACKAGES = ("torch", "torchvision", "timm", "ray", "zarr", "pillow", "numpy")


@dataclass
class Mode:
    """One way of doing the benchmark's work: ``run(repeat)`` returns its figures; ``warmup``
    (default: ``run(-1)``) is the untimed run."""

    name: str
    run: Callable[[int], dict[str, float]]
    warmup: Callable[[], object] | None = None


def spread(values: list[float]) -> dict:
    """Every run, its median and its min-max."""
    return {"runs": list(values), "median": statistics.median(values), "min": min(values),
            "max": max(values)}  # fmt: skip


def ratio(numerator: dict, denominator: dict) -> dict:
    """The per-repeat ratio of two figures' runs (same repeat index), with its spread."""
    pairs = zip(numerator["runs"], denominator["runs"], strict=True)
    return spread([a / b for a, b in pairs])


def shown(figure: dict, digits: int = 3) -> str:
    """``median (min-max)`` of a :func:`spread`."""
    return f"{figure['median']:.{digits}f} ({figure['min']:.{digits}f}-{figure['max']:.{digits}f})"


def interleave(modes: list[Mode], repeats: int, warmup: int, log: Callable = print) -> dict:
    """Warm-up rounds, then ``repeats`` rounds of every mode in turn: ``order`` (the timed runs,
    as they happened) and ``modes`` (per mode and figure, a :func:`spread`)."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"repeats must be at least 1 and warm-up rounds at least 0, "
                          f"got {repeats} and {warmup}")  # fmt: skip
    for _ in range(warmup):
        for mode in modes:
            mode.warmup() if mode.warmup else mode.run(-1)
    order, figures = [], {mode.name: {} for mode in modes}
    for repeat in range(repeats):
        for mode in modes:
            values = mode.run(repeat)
            order.append(mode.name)
            for name, value in values.items():
                figures[mode.name].setdefault(name, []).append(value)
            text = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            log(f"  repeat {repeat + 1}/{repeats} {mode.name}: {text}")
    return {"order": order,
            "modes": {m: {k: spread(v) for k, v in f.items()} for m, f in figures.items()}}  # fmt: skip


def time_steps(
    batches: Iterator, step: Callable[[object], int], warmup_steps: int, steps: int
) -> float:
    """Items per second of ``step`` (returning the batch's item count) over ``steps`` batches
    after ``warmup_steps`` untimed ones; the wait for each batch is timed too."""
    for _ in range(warmup_steps):
        step(next(batches))
    began, items = time.perf_counter(), 0
    for _ in range(steps):
        items += step(next(batches))
    return items / (time.perf_counter() - began)


class StepModes:
    """Modes that train step by step on batches of their own (bench-train, bench-timm). A
    subclass holds ``args`` (``warmup_steps``, ``steps``), ``batches`` (an iterator per mode)
    and ``step(mode, batch)`` returning the batch's images, adding the teacher's time to
    ``teacher_seconds``; mode ``teacher`` is the teacher's forward alone."""

    teacher_seconds = 0.0

    def run(self, mode: str) -> dict[str, float]:
        """One run's figures: images/s; ``online`` also the teacher's ms per image inside the
        run; ``teacher`` the images/s of its forward alone (data wait excluded)."""
        args, batches, counted = self.args, self.batches[mode], [0]

        def step(batch) -> int:
            images = self.step(mode, batch)
            counted[0] += images
            return images

        time_steps(batches, step, 0, args.warmup_steps)
        self.teacher_seconds, counted[0] = 0.0, 0
        rate = time_steps(batches, step, 0, args.steps)
        if mode == "teacher":
            return {"images_per_s": counted[0] / self.teacher_seconds}
        figures = {"images_per_s": rate}
        if mode == "online":
            figures["teacher_ms_per_image"] = 1e3 * self.teacher_seconds / counted[0]
        return figures

    def interleaved(self, modes: tuple[str, ...], repeats: int, warmup: int, log: Callable) -> dict:
        """``modes`` run interleaved (:func:`interleave`), with ``ratios`` per repeat: cached /
        none, cached / online, the ideal cached / online ``(t_cached + t_teacher) / t_cached``
        (``t_teacher`` the teacher's time inside that repeat's online run, so ideal and measured
        share one baseline and one condition) and the share of that ideal reached."""
        runs = [Mode(name, lambda _, name=name: self.run(name)) for name in modes]
        measured = interleave(runs, repeats, warmup, log=log)
        rates = {m: f["images_per_s"] for m, f in measured["modes"].items()}
        in_run = measured["modes"]["online"]["teacher_ms_per_image"]["runs"]
        # (t_cached + t_teacher) / t_cached, t_cached = 1 / rate, t_teacher in ms per image
        ideal = [1 + c * t / 1e3 for c, t in zip(rates["cached"]["runs"], in_run, strict=True)]
        ratios = {
            "cached_over_none": ratio(rates["cached"], rates["none"]),
            "cached_over_online": ratio(rates["cached"], rates["online"]),
            "ideal_cached_over_online": spread(ideal),
        }
        ratios["share_of_ideal"] = ratio(ratios["cached_over_online"],
                                         ratios["ideal_cached_over_online"])  # fmt: skip
        measured["ratios"] = ratios
        return measured


def step_lines(result: dict, targets: tuple[str, str] = ("", "")) -> str:
    """What a benchmark of :class:`StepModes` prints below its heading: img/s per mode, the
    teacher's time inside the online run and the ratios of :meth:`StepModes.interleaved`
    (``targets``: text after cached / none and after the share of ideal)."""
    rates = {mode: figures["images_per_s"] for mode, figures in result["modes"].items()}
    ratios, teacher = result["ratios"], result["modes"]["online"]["teacher_ms_per_image"]
    return (
        "".join(f"  {mode:8s} {shown(rate, 1)} img/s\n" for mode, rate in rates.items())
        + f"  teacher inside the online run: {shown(teacher, 2)} ms/img\n"
        f"  cached / none:   {shown(ratios['cached_over_none'])}{targets[0]}\n"
        f"  cached / online: {shown(ratios['cached_over_online'])}, ideal "
        f"{shown(ratios['ideal_cached_over_online'])}\n"
        f"  share of ideal:  {shown(ratios['share_of_ideal'])}{targets[1]}"
    )


def machine() -> dict:
    """The CPU count and model, the OS and the load average now."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)  # fmt: skip
    except OSError:
        pass
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "platform": platform.platform(),
            "load_average_start": list(os.getloadavg())}  # fmt: skip


def versions() -> dict:
    """Python's and the installed packages' versions (read from their metadata, not imported)."""
    from kdcache import __version__

    found = {"python": platform.python_version(), "kdcache": __version__}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


@dataclass
class Session:
    """One benchmark run: its name and options, the machine as it started, its clock."""

    benchmark: str
    options: dict
    began: float = field(default_factory=time.perf_counter)
    machine: dict = field(default_factory=machine)

    @classmethod
    def start(
        cls, benchmark: str, args: argparse.Namespace, shapes: dict[str, dict] | None = None
    ) -> "Session":
        """The session of a run from the command line: ``shapes``' defaults applied first
        (:func:`apply_shape`), so that the options it records are those the run uses."""
        if shapes is not None:
            apply_shape(args, shapes)
        return cls(benchmark, options_of(args))

    def report(self, config: dict, measured: dict) -> dict:
        """The JSON: the full configuration (options, ``config``, machine, versions; load average
        at the end) beside ``measured`` (``order``, ``modes``, ratios...)."""
        end = {"load_average_end": list(os.getloadavg())}
        full = {**self.options, **config, "machine": {**self.machine, **end},
                "versions": versions()}  # fmt: skip
        return {"benchmark": self.benchmark, "config": full, **measured,
                "seconds": round(time.perf_counter() - self.began, 1)}  # fmt: skip


def progress_log(name: str) -> Callable[[str], None]:
    """A benchmark's progress lines, ``bench-NAME:`` first, flushed at once."""
    return lambda line: print(f"bench-{name}:{line}", flush=True)


def options_of(args: argparse.Namespace) -> dict:
    """The parsed options, without the CLI's own entries."""
    return {k: v for k, v in vars(args).items() if k not in ("run", "command")}


def write_json(path: str | None, result: dict) -> None:
    """``result`` at ``path`` (``--json``), if given."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


def work_folder(location: str | None, benchmark: str, options: dict) -> str:
    """The benchmark's work folder, stamped with this run's options: a new temp dir without
    ``location``; an absent or empty folder, or one an earlier run of the same benchmark made
    (its caches are rebuilt: callers start them afresh). Anything else is refused: it may hold
    another benchmark's or the user's files."""
    if location is None:
        location = tempfile.mkdtemp(prefix=f"kdcache-{benchmark}-")
    stamp = os.path.join(location, STAMP)
    if os.path.isdir(location) and os.listdir(location):
        if not os.path.exists(stamp):
            raise ConfigError(f"work folder {location} holds files and no {STAMP}: not a "
                              f"{benchmark} work folder; give an empty or new folder")  # fmt: skip
        with open(stamp) as f:
            found = json.load(f).get("benchmark")
        if found != benchmark:
            raise ConfigError(f"work folder {location}: {STAMP} says benchmark {found!r}, "
                              f"expected {benchmark!r}; give another folder")  # fmt: skip
    os.makedirs(location, exist_ok=True)
    with open(stamp, "w") as f:
        json.dump({"benchmark": benchmark, "options": options}, f, indent=2, default=str)
    return location


def fresh(path: str) -> str:
    """``path`` with whatever an earlier run left there removed (caches are rebuilt every run)."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    return path


def add_common_options(
    parser: argparse.ArgumentParser,
    *,
    work: str,
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    work_required: bool = False,
    work_flags: tuple[str, ...] = ("--work",),
    with_threads: bool = True,
) -> None:
    """The options every benchmark takes: work folder, JSON output, repeats, warm-up rounds,
    torch threads (not where the layout sets them)."""
    parser.add_argument(*work_flags, dest="work", required=work_required, default=None,
                        help=f"folder for {work} (default: a temp dir); a rerun rebuilds them")  # fmt: skip
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result here")
    parser.add_argument("--repeats", type=int, default=repeats,
                        help="timed rounds, modes interleaved (default: %(default)s)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=warmup,
                        help="untimed rounds before them (default: %(default)s)")  # fmt: skip
    if with_threads:
        parser.add_argument("--threads", type=int, default=threads,
                            help="torch threads of this process (default: %(default)s; None: "
                            "torch's)")  # fmt: skip


SHAPES_HELP = (
    "the workload: fmnist, 28 px grey Fashion-MNIST with 10 classes; imagenet, "
    "ImageNet-shaped RGB JPEGs (about 500x375, made from scikit-image's photos) at "
    "224 px with 1000 classes"
)


def add_shape_option(parser: argparse.ArgumentParser, shapes: dict[str, dict]) -> None:
    """``--shape NAME``: picks the defaults of the :func:`shaped` options (the first shape's
    unless given)."""
    parser.add_argument("--shape", choices=tuple(shapes), default=next(iter(shapes)),
                        help=f"{SHAPES_HELP} (default: %(default)s)")  # fmt: skip


def shaped(parser: argparse.ArgumentParser, shapes: dict[str, dict], flag: str, help: str,
           **kwargs) -> None:  # fmt: skip
    """An option whose default is the chosen shape's (``shapes[shape][dest]``, set by
    :func:`apply_shape`); a value on the command line wins. Its help lists every shape's."""
    dest = flag.lstrip("-").replace("-", "_")
    values = {name: preset[dest] for name, preset in shapes.items()}
    if len(set(map(str, values.values()))) == 1:
        text = str(next(iter(values.values())))
    else:
        text = ", ".join(f"{name} {value}" for name, value in values.items())
    parser.add_argument(flag, default=None, help=f"{help} (default: {text})", **kwargs)


def apply_shape(args: argparse.Namespace, shapes: dict[str, dict]) -> None:
    """Fill every :func:`shaped` option left unset with the chosen shape's default."""
    for dest, value in shapes[getattr(args, "shape", next(iter(shapes)))].items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)


def add_data_options(parser: argparse.ArgumentParser, shapes: dict[str, dict]) -> None:
    """The data slice's options (defaults per shape: ``source``, ``images``, ``test_images``,
    ``shard_size``): dataset, train and test images, shard size."""
    shaped(parser, shapes, "--source", "dataset: as for kdcache shard, or imagenet-shaped "
           "(JPEGs made from scikit-image's photos, 1000 classes)")  # fmt: skip
    shaped(parser, shapes, "--images", "train images", type=int)
    shaped(parser, shapes, "--test-images", "test images", type=int)
    shaped(parser, shapes, "--shard-size", "images per shard", type=int)


def set_threads(threads: int | None) -> int:
    """Set torch's thread count (``None``: leave it); return the count in use."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def add_step_options(parser: argparse.ArgumentParser, shapes: dict[str, dict]) -> None:
    """The training benchmarks' per-run budget (defaults per shape: ``steps``,
    ``warmup_steps``, ``batch_size``): timed steps after untimed ones, batch size, and
    DataLoader workers (kept alive across runs)."""
    shaped(parser, shapes, "--steps", "timed steps per run", type=int)
    shaped(parser, shapes, "--warmup-steps", "untimed steps before them in every run; at "
           "least the loader's prefetched batches", type=int)  # fmt: skip
    shaped(parser, shapes, "--batch-size", "images per step", type=int)
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader workers, persistent (default: %(default)s)")  # fmt: skip
