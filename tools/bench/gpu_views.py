"""Views/s of the device renderer (``device/1``), and the GPU's utilisation on CUDA.

    python -m kdcache.tools.bench.gpu_views --device cpu     # here: the same code on CPU
    python -m kdcache.tools.bench.gpu_views --device cuda    # nvjpeg decode, CUDA ops

Renders the teacher job's way: a set of ImageNet-shaped JPEGs (``tools.bench.photo_set``)
decoded once on the device, then V views of each in batches (``ViewRenderer.render_batch``),
normalised; a warm-up pass, then ``--repeats`` timed passes (median and min-max printed).
``--compare`` also times renderer ``cpu/2`` on the same views for reference.
"""

import argparse
import json
import threading
import time
from dataclasses import replace

import numpy as np
import torch

from kdcache.pipeline.views import ViewRenderer, normalize, source_image
from kdcache.tools.bench.photo_set import photo_jpegs
from kdcache.tools.bench.replay_cost import CONFIGURATIONS, MEAN, STD, _params


def _pass(renderer: ViewRenderer, encoded, params, args, device) -> float:
    """Seconds for every view of every image (decode included)."""
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Utilisation:
    """Samples ``torch.cuda.utilization`` (NVML) every 0.1 s while the timed passes run."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.error = device, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception as error:  # needs pynvml / NVML
                self.error = type(error).__name__
                return

    def __enter__(self):
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> str:
        if self.device.type != "cuda":
            return "n/a (CPU)"
        if not self.samples:
            return f"unavailable ({self.error or 'no samples'})"
        return f"{np.mean(self.samples):.0f} % mean, {max(self.samples)} % max"


def _time(renderer_name: str, encoded, params, args, device) -> dict:
    plan = replace(CONFIGURATIONS[args.plan], renderer=renderer_name)
    renderer = ViewRenderer(plan, device=device)
    _pass(renderer, encoded[:8], params[:8], args, device)  # warm-up (cuDNN, nvjpeg, caches)
    with _Utilisation(device) as utilisation:
        seconds = [_pass(renderer, encoded, params, args, device) for _ in range(args.repeats)]
    rates = np.array([len(encoded) * args.views / s for s in seconds])
    return {"views_per_s_median": float(np.median(rates)), "min": float(rates.min()),
            "max": float(rates.max()), "gpu_utilisation": utilisation.summary()}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plan", choices=list(CONFIGURATIONS), default="crop + flip")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--compare", action="store_true", help="also time renderer cpu/2")
    parser.add_argument("--json", default=None, metavar="FILE")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu)")
    encoded = photo_jpegs(args.images)
    plan = CONFIGURATIONS[args.plan]
    params = _params(replace(plan, views=args.views), encoded)
    result = {"device": str(device), "config": vars(args),
              "device/1": _time("device/1", encoded, params, args, device)}  # fmt: skip
    if device.type == "cuda":
        result["gpu_max_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if args.compare:
        result["cpu/2"] = _time("cpu/2", encoded, params, args, torch.device("cpu"))
    for name in ("device/1", "cpu/2"):
        if name in result:
            r = result[name]
            print(f"gpu-views: {name} on {device if name == 'device/1' else 'cpu'}: "
                  f"{r['views_per_s_median']:.0f} views/s (min {r['min']:.0f}, "
                  f"max {r['max']:.0f}), {args.plan}, {args.size} px")  # fmt: skip
    print(f"gpu-views: GPU utilisation {result['device/1']['gpu_utilisation']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
