"""Asking a --status listener (tests/status, tests/workers): one request, polling for an answer, parsed metrics."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["get", "metrics", "value", "wait_status"]


def get(port: int, path: str, method: str = "GET", timeout: float = 10) -> tuple[int, bytes, dict[str, str]]:
    """One request with urllib; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def wait_status(port: int, path: str, status: int, timeout: float = 15) -> bytes:
    """Poll ``path`` until it answers ``status``; fail with the last answer."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            code, body, _ = get(port, path, timeout=2)
        except OSError as exc:  # a timeout while the loop is blocked
            last = exc
        else:
            if code == status:
                return body
            last = (code, body)
        time.sleep(0.05)
    pytest.fail(f"{path} never answered {status}; last: {last!r}")


def metrics(port: int) -> dict[str, list]:
    code, body, headers = get(port, "/metrics")
    assert code == 200
    assert headers["Content-Type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(body.decode())}


def value(samples: list, **labels: str) -> float:
    found = [s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (labels, samples)
    return found[0]
