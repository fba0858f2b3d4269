"""``python -m kdcache COMMAND ...``: the ``kdcache`` command (``torchrun -m kdcache train ...``)."""

from kdcache.tools.cli.main import main

if __name__ == "__main__":
    main()
