"""Views/s of the device renderer (``device/1``), and the GPU's utilisation on CUDA.

    python -m kdcache.tools.bench.gpu_views --device cpu     # here: the same code on CPU
    python -m kdcache.tools.bench.gpu_views --device cuda    # nvjpeg decode, CUDA ops

Renders the teacher job's way: a set of ImageNet-shaped JPEGs (``tools.bench.photo_set``)
decoded once on the device, then V views of each in batches (``ViewRenderer.render_batch``),
normalised; through the benchmarks' harness: ``--warmup`` untimed rounds on a few images,
then ``--repeats`` timed passes (median and min-max printed). ``--compare`` also times the
default CPU renderer (``cpu/4``) on the same views, the two interleaved.
"""

import argparse
import threading
import time

from kdcache.tools.bench.harness import (
    Mode,
    Session,
    add_common_options,
    interleave,
    set_threads,
    write_json,
)

WARM_IMAGES = 8


def _pass(renderer, encoded, params, args, device) -> float:
    """Seconds for every view of every image (decode included)."""
    from kdcache.pipeline.views import normalize, source_image
    from kdcache.tools.bench.replay_plans import MEAN, STD

    _sync(device)
    began = time.perf_counter()
    images = [source_image(data, 3) for data in encoded]
    for view in range(args.views):
        for start in range(0, len(images), args.batch):
            positions = range(start, min(start + args.batch, len(images)))
            batch = renderer.render_batch(images, params[:, view], positions, args.size)
            normalize(batch.to(device, non_blocking=True), MEAN, STD)
    _sync(device)
    return time.perf_counter() - began


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Utilisation:
    """Samples ``torch.cuda.utilization`` (NVML) every 0.1 s while the timed passes run."""

    def __init__(self, device):
        self.device, self.samples, self.error = device, [], None

    def _run(self, stop: threading.Event) -> None:
        import torch

        while not stop.wait(0.1):
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception as error:  # needs pynvml / NVML
                self.error = type(error).__name__
                return

    def sampled(self, work):
        """``work()``, sampling the GPU meanwhile (on CUDA)."""
        if self.device.type != "cuda":
            return work()
        stop = threading.Event()
        thread = threading.Thread(target=self._run, args=(stop,), daemon=True)
        thread.start()
        try:
            return work()
        finally:
            stop.set()
            thread.join()

    def summary(self) -> str:
        if self.device.type != "cuda":
            return "n/a (CPU)"
        if not self.samples:
            return f"unavailable ({self.error or 'no samples'})"
        return f"{sum(self.samples) / len(self.samples):.0f} % mean, {max(self.samples)} % max"


def _mode(renderer_name: str, encoded, params, args, device, utilisation) -> Mode:
    from dataclasses import replace

    from kdcache.pipeline.views import ViewRenderer
    from kdcache.tools.bench.replay_plans import CONFIGURATIONS

    renderer = ViewRenderer(replace(CONFIGURATIONS[args.plan], renderer=renderer_name),
                            device=device)  # fmt: skip

    def run(_: int) -> dict[str, float]:
        seconds = utilisation.sampled(lambda: _pass(renderer, encoded, params, args, device))
        return {"views_per_s": len(encoded) * args.views / seconds}

    few = (renderer, encoded[:WARM_IMAGES], params[:WARM_IMAGES], args, device)
    return Mode(renderer_name, run, warmup=lambda: _pass(*few))  # cuDNN, nvjpeg, caches


def main(argv: list[str] | None = None) -> dict:
    from kdcache.tools.bench.replay_plans import CONFIGURATIONS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="default: cuda if there is one, else cpu")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--plan", choices=list(CONFIGURATIONS), default="crop + flip")
    parser.add_argument("--compare", action="store_true", help="also time the default CPU renderer")
    add_common_options(parser, work="nothing (unused)", threads=1)
    args = parser.parse_args(argv)
    return run(args, parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Time device/1 (and the default CPU renderer), interleaved; print, write and return
    the report."""
    from dataclasses import replace

    import torch

    from kdcache.pipeline.views import DEFAULT_RENDERER
    from kdcache.tools.bench.photo_set import photo_jpegs
    from kdcache.tools.bench.replay_modes import photo_params
    from kdcache.tools.bench.replay_plans import CONFIGURATIONS

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    session = Session.start("gpu-views", args)
    threads = set_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu)")
    encoded = photo_jpegs(args.images)
    params = photo_params(replace(CONFIGURATIONS[args.plan], views=args.views), encoded)
    utilisation = _Utilisation(device)
    modes = [_mode("device/1", encoded, params, args, device, utilisation)]
    if args.compare:
        modes.append(
            _mode(
                DEFAULT_RENDERER,
                encoded,
                params,
                args,
                torch.device("cpu"),
                _Utilisation(torch.device("cpu")),
            )
        )
    measured = interleave(modes, args.repeats, args.warmup, log=lambda _: None)
    config = {"modes": [m.name for m in modes], "torch_threads": threads,
              "gpu_utilisation": utilisation.summary(),
              "plan_attrs": CONFIGURATIONS[args.plan].to_attrs()}  # fmt: skip
    if device.type == "cuda":
        config["gpu_max_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    result = session.report(config, measured)
    for name, figures in result["modes"].items():
        rate = figures["views_per_s"]
        print(f"gpu-views: {name} on {device if name == 'device/1' else 'cpu'}: "
              f"{rate['median']:.0f} views/s (min {rate['min']:.0f}, max {rate['max']:.0f}), "
              f"{args.plan}, {args.size} px")  # fmt: skip
    print(f"gpu-views: GPU utilisation {config['gpu_utilisation']}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
