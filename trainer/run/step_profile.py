"""``train --profile N``: a ``torch.profiler`` trace of the run's first N optimiser steps and
the share of their time spent waiting for input, so a starved device shows at once."""

import os
import time

import torch

WAIT_LABEL = "kdcache.wait_for_input"


class StepProfile:
    """Profiles steps until ``steps`` are done, then writes ``folder/trace-rank<R>.json``
    (Chrome trace: chrome://tracing or ui.perfetto.dev) and prints the input-wait share.

    Step times are taken after synchronising the device, so they are the device's real step
    times; only the profiled steps pay that synchronisation.
    """

    def __init__(self, steps: int, folder: str, device: torch.device, rank: int, show: bool):
        self.steps, self.folder, self.device, self.rank, self.show = (
            steps,
            folder,
            device,
            rank,
            show,
        )
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(activities=activities)
        self._waited: list[float] = []
        self._took: list[float] = []
        self._began: float | None = None
        self._waiting = None  # the open record_function of a wait

    @property
    def active(self) -> bool:
        return len(self._took) < self.steps

    def batch_wanted(self) -> None:
        """Call before asking the loader for the next batch (the wait shows in the trace as
        ``kdcache.wait_for_input``)."""
        if self.active:
            if self._began is None:
                self._profiler.start()
            self._began = time.perf_counter()
            self._waiting = torch.profiler.record_function(WAIT_LABEL)
            self._waiting.__enter__()

    def batch_arrived(self) -> None:
        """Call when the batch is in hand."""
        if self.active:
            self._waiting.__exit__(None, None, None)
            self._waited.append(time.perf_counter() - self._began)

    def step_done(self) -> None:
        """Call after the optimiser step; finishes the profile after the last profiled step."""
        if not self.active:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._took.append(time.perf_counter() - self._began)
        self._profiler.step()
        if not self.active:
            self._finish()

    def close(self) -> None:
        """Finish a profile the run ended before completing (fewer steps than asked)."""
        if self._took and self.active:
            self._finish()

    def _finish(self) -> None:
        self.steps = len(self._took)
        self._profiler.stop()
        os.makedirs(self.folder, exist_ok=True)
        trace = os.path.join(self.folder, f"trace-rank{self.rank}.json")
        self._profiler.export_chrome_trace(trace)
        if self.show:
            print(self.summary(trace), flush=True)

    def summary(self, trace: str) -> str:
        """One line: steps, time per step, time waiting for input and its share."""
        took, waited = sum(self._took), sum(self._waited)
        count = len(self._took)
        return (
            f"profile: {count} steps, {1e3 * took / count:.1f} ms/step, waiting for input "
            f"{1e3 * waited / count:.1f} ms/step ({100 * waited / took:.0f}% of step time); "
            f"trace {trace}"
        )
