"""The trainer's ``incept`` subcommands (registered as ``incept.commands`` entry points)."""

from incept.cli import Command

train = Command("services.trainer.main", "run a training job in this process")
trainer = Command("services.trainer.worker", "run a trainer worker on the rq queues 'train' and 'datasets'")
converter = Command("services.trainer.worker", "run a dataset converter worker on the rq queue 'datasets'")
