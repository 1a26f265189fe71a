"""Live event streams (issue 14 item 11): a cap per gateway, a longest
lifetime, and liveness that no number of open streams can starve."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.security.conftest import AUTH, start_system, stop_system


def _live_job(system, job_id: str) -> None:
    import redis

    from incept.jobstate import JobState

    JobState(redis.Redis.from_url(system.redis_url)).create(job_id, dataset="d")


async def _open_streams(url: str, job_id: str, n: int, client: httpx.AsyncClient):
    """Open n streams and read their first line; returns the open responses
    (with their line iterators: a collected iterator closes its response)."""
    async def one():
        request = client.build_request("GET", f"{url}/v1/jobs/{job_id}/events", headers=AUTH)
        response = await client.send(request, stream=True)
        assert response.status_code == 200
        response.lines = response.aiter_lines()
        await response.lines.__anext__()
        return response
    return await asyncio.gather(*(one() for _ in range(n)))


def test_streams_beyond_the_cap_are_a_429_and_closed_ones_free_their_slot(system):
    _live_job(system, "capped")
    limit = system.settings["max_event_streams"]

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            streams = await _open_streams(system.url, "capped", limit, client)
            refused = await client.send(client.build_request(
                "GET", f"{system.url}/v1/jobs/capped/events", headers=AUTH), stream=True)
            assert refused.status_code == 429 and refused.headers["retry-after"]
            await refused.aclose()
            await streams[0].aclose()
            for _ in range(100):  # the gateway notices the closed stream within a poll
                again = await client.send(client.build_request(
                    "GET", f"{system.url}/v1/jobs/capped/events", headers=AUTH), stream=True)
                if again.status_code == 200:
                    break
                await again.aclose()
                await asyncio.sleep(0.2)
            assert again.status_code == 200
            for s in [*streams[1:], again]:
                await s.aclose()

    asyncio.run(scenario())
    system.alive()


def test_a_stream_ends_after_its_longest_lifetime(system):
    _live_job(system, "forever")
    lifetime = system.settings["event_stream_max_s"]
    started = time.monotonic()
    with httpx.stream("GET", f"{system.url}/v1/jobs/forever/events", headers=AUTH,
                      timeout=httpx.Timeout(30, read=10)) as r:
        assert r.status_code == 200
        for _line in r.iter_lines():  # keep-alives every second, until the gateway closes it
            assert time.monotonic() - started < lifetime + 30, "the stream outlived its lifetime"
    assert time.monotonic() - started >= lifetime - 1


@pytest.fixture
def roomy(tmp_path, redis_server, exported_models):
    system = start_system(tmp_path, redis_server.url, exported_models, worker=False,
                          max_event_streams=150)
    yield system
    stop_system(system)


def test_liveness_answers_while_many_streams_are_open(roomy):
    """Three times as many open streams as the thread pool has threads (40):
    /healthz answers within a probe's deadline and a plain route still answers
    (before, each stream held a thread in a 1 s blocking read, and /healthz
    queued behind them)."""
    _live_job(roomy, "watched")

    async def scenario():
        limits = httpx.Limits(max_connections=150)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            streams = await _open_streams(roomy.url, "watched", 120, client)
            # Within a probe's deadline (Kubernetes' default is 1 s; 2 s on this shared machine).
            async with httpx.AsyncClient(timeout=2) as probe:
                for _ in range(5):
                    assert (await probe.get(f"{roomy.url}/healthz")).status_code == 200
            async with httpx.AsyncClient(timeout=30) as plain:
                assert (await plain.get(f"{roomy.url}/v1/jobs/watched",
                                        headers=AUTH)).status_code == 200
            for s in streams:
                await s.aclose()

    asyncio.run(scenario())
    roomy.alive()
