"""``python -m trainer ...``: the train command alone (for torchrun)."""

import argparse

from trainer.cli import configure_train_parser


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="kdcache train")
    configure_train_parser(parser)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
