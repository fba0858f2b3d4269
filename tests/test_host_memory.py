"""The teacher actors' host allocator: a CPU forward pass reuses freed memory instead of
faulting fresh pages in at every layer."""

import subprocess
import sys

import pytest

_FAULTS = """
import resource, sys, timm, torch
from kdcache.pipeline.teach import use_host_allocator
assert use_host_allocator(sys.argv[1]) == (sys.argv[1] == "reuse")
torch.set_num_threads(1)
model = timm.create_model("efficientnet_lite0").eval()
x = torch.randn(24, 3, 224, 224)  # its widest activations are over glibc's mmap threshold
with torch.inference_mode():
    for _ in range(3):  # the heap reaches its size
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
"""


def _faults_per_forward(allocator: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _FAULTS, allocator], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_forward_pass_reuses_freed_memory_instead_of_faulting_it_in_again():
    default, reuse = _faults_per_forward("default"), _faults_per_forward("reuse")
    assert default > 20_000, default  # >80 MB of fresh pages per forward, zeroed by the kernel
    assert reuse < default // 20, (reuse, default)
