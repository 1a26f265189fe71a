"""Shared fixtures: a real Redis server per test session (its own process on
a free port, never the machine's shared one), a fresh data root per test."""

from __future__ import annotations

import os
import signal

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    # Tests press Ctrl-C (SIGINT) on the processes they start, as a user at a
    # terminal does. A test run started in the background of a non-interactive
    # shell inherits SIGINT ignored, which its children would inherit too (an
    # ignored signal stays ignored across exec): give them the terminal's default.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from incept.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), persistent=False).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """A clean database on the session's Redis server."""
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
def redis_conn(redis_url):
    from incept.queues import connect

    conn = connect(redis_url)
    yield conn
    conn.close()


@pytest.fixture
def layout(tmp_path):
    from incept.layout import Layout

    return Layout(tmp_path / "data").ensure()
