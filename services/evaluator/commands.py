"""The evaluator's ``incept`` subcommands (registered as ``incept.commands`` entry points)."""

from incept.cli import Command

evaluator = Command("services.evaluator.main", "run an evaluator worker on the rq queue 'eval'")
