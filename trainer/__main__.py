"""``python -m trainer ...``: the train command alone (for torchrun)."""

import argparse
import sys

from trainer.cli import configure_train_parser


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="kdcache train")
    configure_train_parser(parser)
    args = parser.parse_args()
    try:
        args.run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"python -m trainer: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
