"""The ``cachewise`` console command.

Each subcommand lives in the module that does its work; that module exposes
``configure(parser: argparse.ArgumentParser) -> None`` and ``run(args) -> int``.
Modules are imported only when their subcommand runs, so ``cachewise ingest`` never
pays for importing MLflow or vLLM.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("cachewise.data.ingest", "read traces and write the events table"),
    "featurize": ("cachewise.features.featurize", "events table -> feature table with labels"),
    "train": ("cachewise.train.train", "train the LightGBM next-reuse model, log to MLflow"),
    "export": ("cachewise.train.export", "register the model and export it to models/"),
    "score": ("cachewise.train.score", "report a model's prediction quality next to baselines"),
    "replay": ("cachewise.runtime.replay.cli", "replay agent sessions through vLLM's scheduler"),
    "agents": ("cachewise.loadgen.cli", "replay agent sessions as real clients of an OpenAI-compatible server"),
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen subcommand."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="cachewise", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).configure(p)
    args = parser.parse_args(argv)
    return int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
