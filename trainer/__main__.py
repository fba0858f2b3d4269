"""``python -m kdcache.trainer ...``: the train command alone (for torchrun)."""

import argparse
import sys

from kdcache.tools.cli.train_command import configure_train_parser


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kdcache.trainer", description="kdcache train")
    configure_train_parser(parser)
    args = parser.parse_args()
    try:
        args.run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"python -m kdcache.trainer: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
