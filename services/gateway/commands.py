"""The gateway's ``incept`` subcommands (registered as ``incept.commands`` entry points)."""

from incept.cli import Command

gateway = Command("services.gateway.main", "serve the HTTP API and the web page")
