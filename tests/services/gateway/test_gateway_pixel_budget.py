"""The replica-wide budget of pixels being decoded at once (issue 14 item 1)."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.errors import BackendUnavailable
from services.gateway.images import PixelBudget


def test_requests_beyond_the_budget_wait_their_turn_and_time_out():
    async def scenario():
        budget = PixelBudget(100)
        order = []
        first_in = asyncio.Event()
        release = asyncio.Event()

        async def first():
            async with budget.hold(60, 5):
                order.append("first in")
                first_in.set()
                await release.wait()
            order.append("first out")

        async def second():
            await first_in.wait()
            async with budget.hold(60, 5):
                order.append("second in")

        tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
        await first_in.wait()
        await asyncio.sleep(0.05)
        assert budget.in_use == 60 and order == ["first in"]  # 120 > 100: the second waits
        with pytest.raises(BackendUnavailable):  # and a third gives up after its timeout
            async with budget.hold(50, 0.05):
                pass
        release.set()
        await asyncio.gather(*tasks)
        assert order == ["first in", "first out", "second in"] and budget.in_use == 0
        async with budget.hold(1000, 0.05):  # alone, a request bigger than the budget runs
            assert budget.in_use == 1000

    asyncio.run(scenario())
