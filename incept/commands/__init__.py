"""Subcommands of the ``incept`` CLI, one module each (see ``incept.cli``)."""
