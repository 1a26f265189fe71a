"""A small HTTP client for the gateway's /v1 API, used by the CLI client
(``incept submit|status|watch``), the demo job, the load benchmark and the
end-to-end tests — everything they do goes over HTTP exactly as a user's would.

Where the gateway is: ``--url``/``--token``, else INCEPT_GATEWAY_URL /
INCEPT_API_TOKEN, else the local stack's state file (``incept up``), else
http://127.0.0.1:8000."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import EventSource, connect_sse

from incept.errors import UserError

DEFAULT_URL = "http://127.0.0.1:8000"
BUSY_RETRY_MAX_S = 30.0  # the longest wait before asking a full gateway for a stream again


class GatewayError(UserError):
    def __init__(self, message: str, status_code: int | None = None,
                 retry_after_s: float | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_s = retry_after_s


@dataclass
class Event:
    id: str | None
    type: str
    data: Any


def resolve_endpoint(url: str | None = None, token: str | None = None,
                     data_root: str | Path | None = None) -> tuple[str, str | None]:
    """The gateway URL and token to use, by the precedence in the module docstring."""
    from incept.settings import Settings
    from incept.stack import read_state

    settings = Settings()
    url = url or settings.gateway_url
    token = token or settings.api_token
    if url is None or token is None:
        state = read_state(data_root or settings.data_root) or {}
        if url is None and state.get("url"):
            url = state["url"]
            token = token or state.get("token")
        token = token or (settings.tokens()[0] if settings.tokens() else None)
    return (url or DEFAULT_URL).rstrip("/"), token


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: the caller's own backoff decides


def busy_delay(retry_after_s: float | None, waits_so_far: int) -> float:
    """Seconds to wait before asking a full gateway again: its Retry-After, and
    longer (1, 2, 4, 8 ... s) while it stays full; at least 1 s, at most BUSY_RETRY_MAX_S."""
    backoff = 2.0 ** min(waits_so_far, 16)
    return min(BUSY_RETRY_MAX_S, max(1.0, retry_after_s or 0.0, backoff))


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict)
            else str(d) for d in detail)
    text = detail if isinstance(detail, str) else json.dumps(detail)
    # The gateway's title ("invalid job spec") says little without its problems.
    problems = body.get("problems") if isinstance(body, dict) else None
    if isinstance(problems, list) and problems:
        text += "".join(f"\n  - {p}" for p in problems)
    return text


class GatewayClient:
    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 202),
                **kw) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise GatewayError(f"cannot reach the gateway at {self.url} ({e.__class__.__name__}); "
                               "is it running? ('make up' or 'incept up --detach')") from None
        if response.status_code in ok:
            return response
        if response.status_code == 401:
            raise GatewayError(f"the gateway at {self.url} refused the request: missing or wrong "
                               "API token (--token or INCEPT_API_TOKEN)", 401)
        raise GatewayError(f"{method} {path}: {response.status_code} {_detail(response)}",
                           response.status_code, _retry_after(response))

    def get_json(self, path: str, **kw) -> Any:
        return self.request("GET", path, **kw).json()

    # -- API ----------------------------------------------------------------------

    def healthy(self) -> bool:
        try:
            return self.http.get("/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def submit(self, spec: dict, *, attempts: int = 3) -> dict:
        """One job, even when a reply is lost: every attempt carries the same
        Idempotency-Key, so a retry after a 503 (Redis or the cluster busy) gets the
        job the first attempt may have made instead of a second one."""
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        for attempt in range(1, attempts):
            try:
                return self._submit_once(spec, headers)
            except GatewayError as e:
                if e.status_code != 503:
                    raise
                time.sleep(2.0 * attempt)
        return self._submit_once(spec, headers)

    def _submit_once(self, spec: dict, headers: dict) -> dict:
        body = self.request("POST", "/v1/jobs", json=spec, headers=headers).json()
        body.setdefault("job_id", body.get("id"))
        return body

    def job(self, job_id: str) -> dict:
        return self.get_json(f"/v1/jobs/{job_id}")

    def jobs(self) -> list[dict]:
        body = self.get_json("/v1/jobs")
        return body.get("jobs", body) if isinstance(body, dict) else body

    def cancel(self, job_id: str) -> dict:
        return self.request("DELETE", f"/v1/jobs/{job_id}").json()

    def upload_dataset(self, name: str, archive: Path) -> dict:
        """Upload a tar.gz/zip of class folders as the request body (streamed)."""
        kind = "application/zip" if archive.suffix == ".zip" else "application/gzip"
        with open(archive, "rb") as f:
            return self.request("POST", "/v1/datasets", params={"name": name},
                                content=iter(lambda: f.read(1 << 20), b""),
                                headers={"Content-Type": kind}, timeout=600.0).json()

    def dataset(self, name: str) -> dict | None:
        try:
            return self.get_json(f"/v1/datasets/{name}")
        except GatewayError as e:
            if e.status_code == 404:
                return None
            raise

    def models(self) -> list[dict]:
        body = self.get_json("/v1/models")
        return body.get("models", body) if isinstance(body, dict) else body

    def predict(self, model: str, images: list[bytes], *, timeout_s: float = 60.0) -> dict:
        files = [("images", (f"image{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
        return self.request("POST", f"/v1/classify/{model}", files=files,
                            timeout=timeout_s).json()

    def events(self, job_id: str, after: str | None = None, *, reconnect_s: float = 120.0,
               on_busy: Callable[[float], None] | None = None) -> Iterator[Event]:
        """The job's server-sent events, live, up to and including ``end`` (the
        gateway sends it once training is over and every checkpoint has its
        evaluation outcome). A dropped connection (the gateway restarting, or
        closing a stream at its longest lifetime) is resumed after the last event
        id, so no event comes twice, for up to ``reconnect_s`` of the gateway
        being unreachable. A gateway holding all the event streams it may (429)
        is asked again, as long as it takes, after each ``busy_delay``, which
        ``on_busy`` hears of first."""
        last = after
        down_since: float | None = None
        busy_waits = 0
        while True:
            try:
                with self._event_source(job_id, last) as source:
                    down_since, busy_waits = None, 0  # the gateway answers with the stream: it is up
                    for event in _events_of(source):
                        last = event.id or last
                        yield event
                        if event.type == "end":
                            return
                # Closed without an end: the gateway stopped; resume where we were.
            except GatewayError as e:
                if e.status_code != 429:
                    raise
                down_since = None  # it answers: it is up, only full
                delay = busy_delay(e.retry_after_s, busy_waits)
                busy_waits += 1
                if on_busy is not None:
                    on_busy(delay)
                time.sleep(delay)
                continue
            except httpx.TransportError:
                pass
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > reconnect_s:
                raise GatewayError(f"lost the event stream of {job_id} at {self.url}")
            time.sleep(1.0)

    @contextlib.contextmanager
    def _event_source(self, job_id: str, last: str | None) -> Iterator[EventSource]:
        headers = {"Last-Event-ID": last} if last else {}
        with connect_sse(self.http, "GET", f"/v1/jobs/{job_id}/events", headers=headers,
                         timeout=httpx.Timeout(30.0, read=None)) as source:
            response = source.response
            if response.status_code != 200:
                response.read()
                raise GatewayError(f"events of {job_id}: {response.status_code} {_detail(response)}",
                                   response.status_code, _retry_after(response))
            yield source


def _events_of(source: EventSource) -> Iterator[Event]:
    for sse in source.iter_sse():
        if sse.data:  # an empty one is the reconnection delay, not an event
            yield Event(sse.id or None, sse.event, _json_or_text(sse.data))


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
