"""Prediction requests whose cost is set by pixels and item counts, not bytes
(issue 14 item 1): refused from the image headers and before parsing, with the
gateway's peak memory and CPU measured around a flood of them."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.security.conftest import cpu_s, encode, peak_rss_mb

# Grey 6300x6300 JPEGs: ~0.1 MB each on the wire, 40 MP (under max_image_pixels)
# each when decoded. Four per request were measured at +1 GB of gateway RSS.
SIDE = 6300


@pytest.fixture(scope="module")
def huge_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (SIDE, SIDE), 128).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


@pytest.fixture(scope="module")
def warm(system):
    """One ordinary prediction first: the model is loaded before anything is measured."""
    import httpx

    small = encode(np.full((40, 40, 3), 90, np.uint8))
    r = httpx.post(f"{system.url}/v1/classify/flowers", files=[("images", ("a.jpg", small))],
                   timeout=120)
    assert r.status_code == 200, r.text
    return small


def _flood(send, n: int = 8) -> list[int]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda _: send().status_code, range(n)))


def test_a_flood_of_huge_images_is_refused_from_their_headers(system, http, warm, huge_jpeg):
    rss, cpu = peak_rss_mb(system.gateway.pid), cpu_s(system.gateway.pid)
    files = [("images", (f"{i}.jpg", huge_jpeg, "image/jpeg")) for i in range(4)]
    codes = _flood(lambda: http.post("/v1/classify/flowers", files=files))
    assert set(codes) == {413}, codes
    r = http.post("/v1/classify/flowers", files=files)
    assert "max_request_pixels" in r.json()["detail"]
    grown_mb = peak_rss_mb(system.gateway.pid) - rss
    used_s = cpu_s(system.gateway.pid) - cpu
    print(f"flood of 9 x 4 x {SIDE}^2 px: gateway peak RSS +{grown_mb:.0f} MB, CPU {used_s:.2f} s")
    assert grown_mb < 100 and used_s < 5


@pytest.mark.parametrize("path", ["/v1/classify/flowers", "/v1/models/flowers:predict"])
def test_json_instances_are_counted_before_the_body_is_parsed(system, http, warm, path):
    body = b'{"instances": [' + b",".join([b'{"b64":""}'] * 1_800_000) + b"]}"  # ~20 MB
    rss, cpu = peak_rss_mb(system.gateway.pid), cpu_s(system.gateway.pid)
    codes = _flood(lambda: http.post(path, content=body,
                                     headers={"Content-Type": "application/json"}), n=4)
    assert set(codes) == {413}, codes
    grown_mb = peak_rss_mb(system.gateway.pid) - rss
    used_s = cpu_s(system.gateway.pid) - cpu
    print(f"4 x 20 MB of empty instances: gateway peak RSS +{grown_mb:.0f} MB, CPU {used_s:.2f} s")
    # The bodies themselves (4 x 20 MB, read in chunks) are the floor.
    assert grown_mb < 250 and used_s < 5


def test_a_multipart_body_of_many_parts_is_refused_while_parsing(http, warm):
    boundary = "b0undary"
    part = f"--{boundary}\r\nContent-Disposition: form-data; name=x\r\n\r\ny\r\n".encode()
    body = part * 200_000 + f"--{boundary}--\r\n".encode()
    r = http.post("/v1/classify/flowers", content=body,
                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413, r.text


def test_images_within_the_budget_are_still_classified(system, http, warm):
    side = int((system.settings["max_request_pixels"] / 2) ** 0.5)  # two fit, three do not
    image = encode(np.full((side, side, 3), 120, np.uint8))
    two = http.post("/v1/classify/flowers",
                    json={"instances": [{"b64": base64.b64encode(image).decode()}] * 2})
    assert two.status_code == 200, two.text
    assert len(two.json()["predictions"]) == 2
    three = http.post("/v1/classify/flowers",
                      json={"instances": [{"b64": base64.b64encode(image).decode()}] * 3})
    assert three.status_code == 413
