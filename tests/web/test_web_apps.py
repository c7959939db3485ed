"""`tapster web --wsgi` and `--asgi` in real processes: the thread pool, request bodies, repeated headers, the
ASGI lifespan, and a graceful stop (a slow request finishes, an idle keep-alive connection is closed)."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
from pathlib import Path

import pytest
from web_support import LOOPS, raw, request, start_web

from conftest import TapsterProcess

WSGI_APP = """\
import threading
import time

lock = threading.Lock()
active = 0
most = 0


def application(environ, start_response):
    global active, most
    path = environ["PATH_INFO"]
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        return [environ["REQUEST_METHOD"].encode(), b" ", body]
    if path == "/most":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(most).encode()]
    if path == "/slow":
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.4)
        with lock:
            active -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [threading.current_thread().name.encode()]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"nothing here"]
"""

ASGI_APP = """\
import asyncio
import logging
import os

log = logging.getLogger("asgi-test-app")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if os.environ.get("FAIL_STARTUP"):
                    await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
                    return
                scope["state"]["greeting"] = "hello from startup"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                log.info("lifespan shutdown ran")
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    path = scope["path"]
    if path == "/state":
        body = scope["state"]["greeting"].encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"x-a", b"1"), (b"x-a", b"2")]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/upload":
        chunks = []
        while True:
            message = await receive()
            chunks.append(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": str(len(b"".join(chunks))).encode()})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/slow":
        log.info("slow request started")
        await asyncio.sleep(1.5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"slow done"})
    elif path == "/boom":
        raise RuntimeError("boom")
    else:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["raw_path"] + b"?" + scope["query_string"]})
"""


@pytest.fixture
def apps(tmp_path: Path) -> Path:
    (tmp_path / "wsgiapp.py").write_text(WSGI_APP)
    (tmp_path / "asgiapp.py").write_text(ASGI_APP)
    return tmp_path


@pytest.mark.parametrize("loop", LOOPS)
def test_wsgi_body_headers_and_errors(tapster: type[TapsterProcess], apps: Path, loop: str) -> None:
    """A WSGI app gets the request body and method; both Set-Cookie headers arrive; its 404 passes through."""
    _, port = start_web(tapster, ["--wsgi", "wsgiapp:application"], loop=loop)
    response, body = request(port, "/echo", method="POST", body=b"x" * 100_000)
    assert response.status == 200 and body == b"POST " + b"x" * 100_000
    assert response.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    response, body = request(port, "/nope")
    assert response.status == 404 and body == b"nothing here"
    head = raw(port, b"HEAD /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404") and head.partition(b"\r\n\r\n")[2] == b""  # headers only


def test_wsgi_thread_pool_is_sized_by_threads(tapster: type[TapsterProcess], apps: Path) -> None:
    """With --threads 3, eight concurrent slow requests all succeed, and at most three ran at once."""
    _, port = start_web(tapster, ["--wsgi", "wsgiapp:application", "--threads", "3"])
    results: list[tuple[int, bytes]] = []

    def one() -> None:
        response, body = request(port, "/slow")
        results.append((response.status, body))

    workers = [threading.Thread(target=one) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert len(results) == 8 and all(status == 200 for status, _ in results)
    assert len({body for _, body in results}) <= 3  # thread names: the pool never grew past three
    assert request(port, "/most")[1] == b"3"


def test_asgi_lifespan_state_repeated_headers_bodies(tapster: type[TapsterProcess], apps: Path) -> None:
    """An ASGI app: the lifespan start-up's state reaches requests, repeated headers are all sent, a request
    body arrives whole, a streamed response arrives whole, raw path and query pass unchanged, an exception is a
    500, and the lifespan shut-down runs at stop."""
    process, port = start_web(tapster, ["--asgi", "asgiapp:app"])
    response, body = request(port, "/state")
    assert body == b"hello from startup"
    assert response.headers.get_all("X-A") == ["1", "2"]
    response, body = request(port, "/upload", method="POST", body=b"y" * 300_000)
    assert response.status == 201 and body == b"300000"
    response, body = request(port, "/stream")
    assert body == b"part0;part1;part2;"
    response, body = request(port, "/state", method="HEAD")
    assert response.status == 200 and body == b"" and response.headers["Content-Length"] == "18"
    assert request(port, "/a%2Fb?q=%20x")[1] == b"/a%2Fb?q=%20x"
    response, body = request(port, "/boom")
    assert response.status == 500
    process.wait_for("ASGI app .* raised on GET /boom")
    process.signal(signal.SIGTERM)
    status, out, _ = process.finish()
    assert status == 0
    assert "lifespan shutdown ran" in out


def test_asgi_lifespan_startup_failure_fails_the_start(apps: Path) -> None:
    """lifespan.startup.failed: the start fails, exit 1, one line with the app's message."""
    from conftest import run_tapster

    result = run_tapster(
        ["-n", "-o", "--pidfile=", "web", "--asgi", "asgiapp:app", "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=apps,
        env={"FAIL_STARTUP": "1"},
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "ASGI lifespan start-up failed: database unreachable" in lines[0]


@pytest.mark.parametrize("loop", LOOPS)
def test_graceful_stop_finishes_a_slow_request_and_closes_idle_keepalive(
    tapster: type[TapsterProcess], apps: Path, loop: str
) -> None:
    """SIGTERM while a slow request runs: an idle keep-alive connection is closed at once, the slow request
    still gets its whole answer, and the process exits 0."""
    process, port = start_web(tapster, ["--asgi", "asgiapp:app"], loop=loop)
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.request("GET", "/state")
    first = idle.getresponse()
    assert first.read() == b"hello from startup" and not first.will_close  # kept alive, now idle
    idle_sock = idle.sock
    assert idle_sock is not None

    slow_result: list[bytes] = []
    slow = threading.Thread(
        target=lambda: slow_result.append(raw(port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")), daemon=True
    )
    slow.start()
    process.wait_for("slow request started")
    process.signal(signal.SIGTERM)
    idle_sock.settimeout(1.0)  # the slow request takes 1.5 s: the idle one must be closed well before
    assert idle_sock.recv(100) == b""
    assert slow.is_alive()  # the idle connection closed while the slow request was still running
    slow.join(10)
    assert slow_result and slow_result[0].startswith(b"HTTP/1.1 200")
    assert slow_result[0].endswith(b"slow done")
    status, _, _ = process.finish()
    assert status == 0
    idle.close()


def test_a_malformed_request_is_one_log_line(tapster: type[TapsterProcess], apps: Path) -> None:
    """A client's garbage gets a 400 and one warning line in the log, not a traceback."""
    process, port = start_web(tapster, ["--asgi", "asgiapp:app"])
    answer = raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Header: y\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"
    process.wait_for("bad request")
    process.signal(signal.SIGTERM)
    _, out, _ = process.finish()
    assert "Traceback" not in out


def test_unix_socket_listener(tapster: type[TapsterProcess], apps: Path, tmp_path: Path) -> None:
    """--listen unix:PATH serves HTTP on the socket file (any tapster endpoint works)."""
    path = tmp_path / "web.sock"
    process = tapster(
        ["-n", "-o", "--pidfile=", "web", "--wsgi", "wsgiapp:application", "--listen", f"unix:{path}"]
    )
    process.wait_for("WebServer starting on")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b"\r\n\r\n4\r\nPOST\r\n1\r\n \r\n2\r\nhi\r\n0\r\n\r\n")  # chunked: no length given


def test_a_request_past_the_shutdown_timeout_is_cut_and_counted(
    tapster: type[TapsterProcess], apps: Path
) -> None:
    """A request still running at --shutdown-timeout is closed, the log counts it, and nothing is left
    pending (no "Task was destroyed" from asyncio)."""
    process = tapster(
        [
            "-n",
            "-o",
            "--pidfile=",
            "--shutdown-timeout",
            "0.5",
            "web",
            "--asgi",
            "asgiapp:app",
            "--listen",
            "tcp:0:interface=127.0.0.1",
        ]
    )
    port = process.port("WebServer")
    answers: list[bytes] = []
    slow = threading.Thread(
        target=lambda: answers.append(raw(port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")), daemon=True
    )
    slow.start()
    process.wait_for("slow request started")
    process.signal(signal.SIGTERM)
    process.wait_for(r"closed 1 connection\(s\) still busy at the shutdown deadline")
    _, _, err = process.finish()
    slow.join(10)
    assert answers == [b""]
    assert "Task was destroyed" not in err and "Traceback" not in err
