"""At most ``limit`` of one kind of long request at once per gateway (uploads,
event streams); beyond, 429 with Retry-After. Counted on the event loop."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from services.gateway.errors import ApiError


class Lease:
    """One taken slot; ``release`` may be called more than once (a stream ends
    in its generator, or never starts and is released by the response)."""

    def __init__(self, slots: Slots):
        self._slots: Slots | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.active -= 1
            self._slots = None


class Slots:
    def __init__(self, limit: int, what: str, retry_after_s: int = 30):
        self.limit = limit
        self.what = what
        self.retry_after_s = retry_after_s
        self.active = 0

    def take(self) -> Lease:
        if self.active >= self.limit:
            raise ApiError(f"{self.active} {self.what} are open on this gateway (the limit is "
                           f"{self.limit}); try again later", status_code=429,
                           headers={"Retry-After": str(self.retry_after_s)})
        self.active += 1
        return Lease(self)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        lease = self.take()
        try:
            yield
        finally:
            lease.release()
