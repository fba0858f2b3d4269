"""How the teacher's process allocates host memory.

A CPU forward pass allocates and frees activation tensors of tens of MB at every layer. glibc
serves each allocation over its mmap threshold (at most 32 MB) with a fresh ``mmap`` and hands
it back to the kernel on free, so every layer of every batch faults its pages in again and the
kernel zeroes them. ``reuse`` (:func:`use_host_allocator`) keeps freed memory in the process
for the next allocation instead (the glibc counterpart of the jemalloc/tcmalloc preload PyTorch's CPU
tuning guides recommend). Values are unchanged: only where the bytes come from.
"""

import ctypes
import ctypes.util

HOST_ALLOCATORS = ("reuse", "default")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, <malloc.h>
_TRIM_THRESHOLD = 1 << 30  # free heap top returned to the kernel only beyond 1 GiB


def use_host_allocator(choice: str) -> bool:
    """Apply one of :data:`HOST_ALLOCATORS` to this process; whether anything changed.
    ``default`` leaves the C library alone; ``reuse`` is :func:`_reuse_freed_memory`."""
    return choice == "reuse" and _reuse_freed_memory()


def _reuse_freed_memory() -> bool:
    """Serve every allocation from the heap (no ``mmap``) and keep freed memory for reuse
    (trim only beyond 1 GiB free): pages are faulted in once, and resident memory stays at its
    high-water mark (which fragmentation can raise above the default's peak). Whether it
    applied: False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # no C library by that name, or no mallopt
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def return_free_memory() -> bool:
    """Hand the heap's free pages back to the kernel now (glibc's ``malloc_trim``), whatever
    the allocator: after a block of huge images, whose temporaries the next block would not
    reuse, so resident memory follows the largest block instead of climbing with every new
    record size. Whether anything was returned (False where the C library is not glibc)."""
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0))
    except (OSError, AttributeError, TypeError):
        return False
