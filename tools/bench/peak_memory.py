"""A process's own peak resident memory from ``/proc/self/status`` (``VmHWM``), restarted on
demand. Child processes measure themselves with it: ``ru_maxrss`` of a forked child would carry
its parent's peak over the fork. Linux only; imports nothing heavy, so importing it does not
move what it measures."""


def status(field: str) -> int:
    """This process's ``field`` of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) << 10


def restart_peak() -> int:
    """Start the peak (``VmHWM``) again from the resident memory now; returns that memory
    (``VmRSS``) in bytes, the base a later peak is measured above."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status("VmRSS")
