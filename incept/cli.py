"""The ``incept`` command. Each subcommand lives in its own module with
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only
when their command runs, so ``incept status`` never pays for TensorFlow."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from incept.errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("incept.commands.convert", "convert a folder of class folders to TFRecords"),
    "download": ("incept.commands.download", "download the flowers archive or the Inception v4 checkpoint"),
    "train": ("services.trainer.main", "run a training job in this process"),
    "trainer": ("services.trainer.worker", "run a trainer worker on the rq queues 'train' and 'datasets'"),
    "converter": ("services.trainer.worker", "run a dataset converter worker on the rq queue 'datasets'"),
    "evaluator": ("services.evaluator.main", "run an evaluator worker on the rq queue 'eval'"),
    "export": ("incept.commands.export", "export a checkpoint as a SavedModel for TF Serving"),
    "gateway": ("services.gateway.main", "serve the HTTP API and the web page"),
    "submit": ("incept.commands.client", "submit a job spec to the gateway"),
    "status": ("incept.commands.client", "show jobs, or one job"),
    "watch": ("incept.commands.client", "follow a job's progress live"),
    "predict": ("incept.commands.predict", "classify images through the gateway, TF Serving gRPC or REST"),
    "up": ("incept.commands.stack", "start the whole system as local processes"),
    "down": ("incept.commands.stack", "stop a stack started with 'incept up --detach'"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="incept",
        description="Fine-tune Inception v4 on labelled photos, evaluate every checkpoint, serve the best.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        chosen = next((a for a in argv if not a.startswith("-")), None)
        if name == chosen:
            # Only the chosen command needs its module (and its arguments).
            mod = importlib.import_module(module)
            _add_arguments(mod, name, p)
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
