"""``kdcache --help`` and every ``kdcache CMD --help`` import neither torch, timm nor Ray."""

import subprocess
import sys

_EVERY_HELP = """
import contextlib, io, sys
from kdcache.tools.cli.main import command_names, main
commands = command_names()
for argv in [["--help"]] + [[name, "--help"] for name in commands]:
    with contextlib.redirect_stdout(io.StringIO()) as shown, contextlib.suppress(SystemExit):
        main(argv)
    assert "usage: kdcache" in shown.getvalue(), argv
print("commands", len(commands))
print("heavy", sorted(m for m in ("torch", "torchvision", "timm", "ray") if m in sys.modules))
"""


def test_every_help_leaves_torch_timm_and_ray_unimported():
    result = subprocess.run(
        [sys.executable, "-c", _EVERY_HELP], capture_output=True, text=True, check=True
    )
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert int(lines["commands"]) >= 10
    assert lines["heavy"] == "[]", result.stdout
