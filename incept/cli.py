"""The ``incept`` command. Each subcommand lives in its own module with
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only
when their command runs, so ``incept status`` never pays for TensorFlow.

The library's commands are listed here; the services register theirs
(``train``, ``trainer``, ``evaluator``, ``gateway``) as ``incept.commands``
entry points in pyproject.toml, so the library never imports a service."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points

from incept import __version__
from incept.errors import UserError

ENTRY_POINT_GROUP = "incept.commands"


@dataclass(frozen=True)
class Command:
    module: str  # has add_arguments/run, or add_<name>_arguments/run_<name>
    help: str


COMMANDS: dict[str, Command] = {
    "convert": Command("incept.commands.convert", "convert a folder of class folders to TFRecords"),
    "download": Command("incept.commands.download",
                        "download the flowers archive or the Inception v4 checkpoint"),
    "export": Command("incept.commands.export", "export a checkpoint as a SavedModel for TF Serving"),
    "submit": Command("incept.commands.client", "submit a job spec to the gateway"),
    "status": Command("incept.commands.client", "show jobs, or one job"),
    "watch": Command("incept.commands.client", "follow a job's progress live"),
    "predict": Command("incept.commands.predict",
                       "classify images through the gateway, TF Serving gRPC or REST"),
    "up": Command("incept.commands.stack", "start the whole system as local processes"),
    "down": Command("incept.commands.stack", "stop a stack started with 'incept up --detach'"),
}


def all_commands() -> dict[str, Command]:
    """The library's commands and those the installed services register."""
    found = dict(COMMANDS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.load()
    return found


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="incept",
        description="Fine-tune Inception v4 on labelled photos, evaluate every checkpoint, serve the best.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"incept {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = all_commands()
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen is not None and chosen not in commands:
        parser.error(f"unknown command {chosen!r}; the services' commands are registered as "
                     f"{ENTRY_POINT_GROUP!r} entry points: if one is missing, reinstall the package "
                     "(pip install -e .)")
    for name, command in commands.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        p.set_defaults(_module=command.module)
        if name == chosen:
            # Only the chosen command needs its module (and its arguments).
            _add_arguments(importlib.import_module(command.module), name, p)
    return parser


def _add_arguments(mod, name: str, parser: argparse.ArgumentParser) -> None:
    adder = getattr(mod, f"add_{name.replace('-', '_')}_arguments", None) or mod.add_arguments
    adder(parser)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # httpx logs every request at INFO: noise for a command-line client.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    mod = importlib.import_module(args._module)
    runner = getattr(mod, f"run_{args.command.replace('-', '_')}", None) or mod.run
    try:
        return int(runner(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
