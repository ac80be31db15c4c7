"""The one `orchard` command, with a subcommand for each role.

Each subcommand lives beside the code it runs; this module only wires them up,
importing each lazily so that an image with one extra installed (trainer, server)
never imports the dependencies of another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, help). The module provides `add_arguments(parser)` and `run(args) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("orchard.handlers.main", "run the Kopf operator"),
    "crds": ("orchard.api.crdgen", "write the CRD YAML, or check it is in step with the models"),
    "train": ("orchard.trainer.main", "train the model a TrainingJob describes"),
    "serve": ("orchard.serving.main", "serve a trained model over the Open Inference Protocol"),
    "evaluate": (
        "orchard.trainer.evaluation",
        "score a candidate and a baseline artifact on the same held-out and collected rows",
    ),
    "replay": (
        "orchard.trainer.replay",
        "send an artifact's held-out and collected rows to serving pods as replayed requests",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchard", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text).set_defaults(
            _module=module_name
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the subcommand name first, then let its module add its own arguments.
    known, _ = parser.parse_known_args(argv[:1] or ["--help"])
    module = importlib.import_module(known._module)
    sub_parser = argparse.ArgumentParser(
        prog=f"orchard {known.command}", description=SUBCOMMANDS[known.command][1]
    )
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    result: int = module.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
