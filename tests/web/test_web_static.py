"""`tapster web --path DIR` in a real process: index files, listings, MIME types, ranges, 304s, and no way out."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from web_support import LOOPS, raw_get, request, start_web

from conftest import TapsterProcess, run_tapster
from support import fd_is_open, wait_until

SECRET = "TOP-SECRET-OUTSIDE-THE-ROOT"
TRICKY = '<b onmouseover="x">&\'.txt'


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A served directory, with a secret file and a secret directory beside it (outside the root)."""
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "index.html").write_text("<h1>home</h1>\n")
    (root / "style.css").write_text("body {}\n")
    (root / "data.json").write_text("{}\n")
    (root / "blob.qqqunknown").write_bytes(b"\0\1")
    (root / "sub" / "numbers.txt").write_text("".join(str(i % 10) for i in range(1000)))
    (root / "sub" / TRICKY).write_text("tricky\n")
    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "secretdir").mkdir()
    (tmp_path / "secretdir" / "inner.txt").write_text(SECRET)
    os.symlink(tmp_path / "secret.txt", root / "link-out.txt")
    os.symlink(tmp_path / "secretdir", root / "dirlink-out")
    os.symlink(root / "sub" / "numbers.txt", root / "link-in.txt")
    return root


def test_index_file_mime_types_and_head(tapster: type[TapsterProcess], site: Path) -> None:
    """/ serves index.html; each file gets its MIME type (octet-stream when unknown); HEAD sends no body."""
    _, port = start_web(tapster, ["--path", str(site)])
    response, body = request(port, "/")
    assert response.status == 200 and body == b"<h1>home</h1>\n"
    assert response.headers["Content-Type"].startswith("text/html")
    for name, expected in [
        ("style.css", "text/css"),
        ("data.json", "application/json"),
        ("blob.qqqunknown", "application/octet-stream"),
        ("sub/numbers.txt", "text/plain"),
    ]:
        response, _ = request(port, "/" + name)
        assert response.status == 200, name
        assert response.headers["Content-Type"].split(";")[0] == expected, name
    response, body = request(port, "/sub/numbers.txt", method="HEAD")
    assert response.status == 200 and body == b"" and response.headers["Content-Length"] == "1000"


def test_listing_escapes_names_and_a_directory_without_slash_redirects(
    tapster: type[TapsterProcess], site: Path
) -> None:
    """A directory without an index is listed with names escaped for HTML and links percent-encoded;
    /sub (no slash) is a 301 to /sub/; --no-listings makes it 403."""
    process, port = start_web(tapster, ["--path", str(site)])
    response, body = request(port, "/sub/")
    page = body.decode()
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
    assert "<b " not in page
    assert ">&lt;b onmouseover=&quot;x&quot;&gt;&amp;&#x27;.txt</a>" in page
    assert 'href="%3Cb%20onmouseover%3D%22x%22%3E%26%27.txt"' in page
    assert 'href="numbers.txt"' in page
    response, _ = request(port, "/sub?x=1")
    assert response.status == 301 and response.headers["Location"] == "/sub/?x=1"
    process.signal(signal.SIGTERM)
    assert process.finish()[0] == 0
    _, port = start_web(tapster, ["--path", str(site), "--no-listings"])
    assert request(port, "/empty/")[0].status == 403


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/sub%2f..%2f..%2fsecret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "/sub/..%00/secret.txt",
        "/link-out.txt",
        "/dirlink-out/inner.txt",
        "/dirlink-out/",
        "//../secret.txt",
        "/./../secret.txt",
    ],
)
def test_no_way_out_of_the_root(tapster: type[TapsterProcess], site: Path, target: str) -> None:
    """`..` raw or encoded, an encoded slash or backslash, NUL, and symlinks pointing out: 404, never the secret."""
    _, port = start_web(tapster, ["--path", str(site)])
    status, body = raw_get(port, target)
    assert status == 404, (target, status)
    assert SECRET.encode() not in body


def test_a_symlink_inside_the_root_is_served(tapster: type[TapsterProcess], site: Path) -> None:
    """A link to a file inside the root works: only links leading out are refused."""
    _, port = start_web(tapster, ["--path", str(site)])
    response, body = request(port, "/link-in.txt")
    assert response.status == 200 and len(body) == 1000


@pytest.mark.parametrize("loop", LOOPS)
def test_byte_ranges(tapster: type[TapsterProcess], site: Path, loop: str) -> None:
    """Range requests: a slice is 206 with Content-Range, a suffix range too, one past the end is 416."""
    _, port = start_web(tapster, ["--path", str(site)], loop=loop)
    text = (site / "sub" / "numbers.txt").read_bytes()
    response, body = request(port, "/sub/numbers.txt", headers={"Range": "bytes=10-19"})
    assert response.status == 206 and body == text[10:20]
    assert response.headers["Content-Range"] == "bytes 10-19/1000"
    response, body = request(port, "/sub/numbers.txt", headers={"Range": "bytes=-5"})
    assert response.status == 206 and body == text[-5:]
    response, _ = request(port, "/sub/numbers.txt", headers={"Range": "bytes=5000-"})
    assert response.status == 416


def test_etag_and_last_modified_give_304(tapster: type[TapsterProcess], site: Path) -> None:
    """The ETag and Last-Modified a response carries make the same request a 304 with no body; a changed
    file gets a new ETag and a 200."""
    _, port = start_web(tapster, ["--path", str(site)])
    response, _ = request(port, "/style.css")
    etag, modified = response.headers["ETag"], response.headers["Last-Modified"]
    assert etag and email.utils.parsedate_to_datetime(modified)
    response, body = request(port, "/style.css", headers={"If-None-Match": etag})
    assert response.status == 304 and body == b""
    response, body = request(port, "/style.css", headers={"If-Modified-Since": modified})
    assert response.status == 304 and body == b""
    (site / "style.css").write_text("body { color: red }\n")
    os.utime(site / "style.css", (1, 2_000_000_000))
    response, body = request(port, "/style.css", headers={"If-None-Match": etag})
    assert response.status == 200 and body == b"body { color: red }\n"
    assert response.headers["ETag"] != etag


def test_added_headers_are_on_every_response(tapster: type[TapsterProcess], site: Path) -> None:
    """--add-header sets its header on files, listings, redirects and errors alike."""
    _, port = start_web(
        tapster, ["--path", str(site), "--add-header", "X-Frame-Options: DENY", "--add-header", "X-Test:a:b"]
    )
    for path, status in [("/", 200), ("/sub/", 200), ("/sub", 301), ("/missing", 404)]:
        response, _ = request(port, path)
        assert response.status == status
        assert response.headers["X-Frame-Options"] == "DENY", path
        assert response.headers["X-Test"] == "a:b", path


def test_access_log_in_combined_format(tapster: type[TapsterProcess], site: Path, tmp_path: Path) -> None:
    """Each request is one combined-format line in the main log, the client's fields escaped; with
    --access-log FILE the file holds bare lines; with off there are none."""
    process, port = start_web(tapster, ["--path", str(site)])
    request(port, "/sub/numbers.txt", headers={"User-Agent": 'evil"agent\xe9', "Referer": "http://r/"})
    line = process.wait_for(r'"GET /sub/numbers.txt HTTP/1.1"').string
    assert line.endswith(' 200 1000 "http://r/" "evil\\"agent\\xe9"')
    assert "127.0.0.1 - - [" in line
    process.signal(signal.SIGTERM)
    process.finish()

    log_file = tmp_path / "access.log"
    process, port = start_web(tapster, ["--path", str(site), "--access-log", str(log_file)])
    request(port, "/missing")
    process.signal(signal.SIGTERM)
    _, out, _ = process.finish()
    lines = log_file.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("127.0.0.1 - - [")
    assert lines[0].endswith('"GET /missing HTTP/1.1" 404 14 "-" "-"')
    assert "GET /missing" not in out

    process, port = start_web(tapster, ["--path", str(site), "--access-log", "off"])
    request(port, "/")
    process.signal(signal.SIGTERM)
    _, out, _ = process.finish()
    assert "GET /" not in out


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_fetches_a_file_and_a_range(tapster: type[TapsterProcess], site: Path) -> None:
    """curl, the client people use: a whole file, and a range of it."""
    _, port = start_web(tapster, ["--path", str(site)])
    url = f"http://127.0.0.1:{port}/sub/numbers.txt"
    whole = subprocess.run(["curl", "-sS", "--fail", url], capture_output=True, check=True, timeout=30)
    assert whole.stdout == (site / "sub" / "numbers.txt").read_bytes()
    part = subprocess.run(["curl", "-sS", "-r", "0-9", url], capture_output=True, check=True, timeout=30)
    assert part.stdout == b"0123456789"


def test_small_and_large_files_answer_alike(tapster: type[TapsterProcess], site: Path) -> None:
    """A small file (read on the loop) and a large one (FileResponse) carry the same kinds of headers, and the
    small file's ETag is one FileResponse recognises: the 304 for it comes from FileResponse."""
    (site / "small.txt").write_bytes(b"s" * 1000)
    (site / "large.txt").write_bytes(b"l" * (200 * 1024))
    _, port = start_web(tapster, ["--path", str(site)])
    seen = {}
    for name, size in [("small.txt", 1000), ("large.txt", 200 * 1024)]:
        for method in ("GET", "HEAD"):
            response, body = request(port, "/" + name, method=method)
            assert response.status == 200
            assert body == (b"" if method == "HEAD" else (site / name).read_bytes())
            assert response.headers["Content-Length"] == str(size)
            assert response.headers["Accept-Ranges"] == "bytes"
            assert response.headers["Content-Type"].split(";")[0] == "text/plain"
            st = (site / name).stat()
            assert response.headers["ETag"] == f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
            modified = email.utils.parsedate_to_datetime(response.headers["Last-Modified"]).timestamp()
            assert modified == math.ceil(
                st.st_mtime
            )  # aiohttp rounds up: the date is never before the change
            seen[name, method] = sorted(k.lower() for k in response.headers if k not in ("Date", "Server"))
    assert seen["small.txt", "GET"] == seen["large.txt", "GET"]
    response, _ = request(port, "/small.txt")
    response, body = request(port, "/small.txt", headers={"If-None-Match": response.headers["ETag"]})
    assert response.status == 304 and body == b""
    response, body = request(port, "/small.txt", headers={"Range": "bytes=10-19"})
    assert response.status == 206 and body == b"s" * 10


def test_a_precompressed_sibling_is_still_offered(tapster: type[TapsterProcess], site: Path) -> None:
    """FileResponse serves FILE.gz to a client accepting gzip; the small-file path leaves such requests to it."""
    import gzip

    (site / "app.js").write_text("console.log(1)\n")
    (site / "app.js.gz").write_bytes(gzip.compress(b"console.log(1)\n"))
    _, port = start_web(tapster, ["--path", str(site)])
    response, body = request(port, "/app.js", headers={"Accept-Encoding": "gzip"})
    assert response.status == 200 and response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == b"console.log(1)\n"
    response, body = request(port, "/app.js")
    assert (
        response.status == 200 and "Content-Encoding" not in response.headers and body == b"console.log(1)\n"
    )


def test_a_file_swapped_after_the_check_is_not_served(site: Path, tmp_path: Path) -> None:
    """The small-file path opens without following links and compares the file it opened with the one it
    checked: a link out of the root swapped in between (here: the checked stat is of another file, and the
    name is a link out) is refused, not served."""
    from aiohttp.test_utils import make_mocked_request
    from aiohttp.web import HTTPNotFound

    from tapster.services._web_static import StaticFiles

    files = StaticFiles(str(site))
    checked = (site / "style.css").stat()
    request_ = make_mocked_request("GET", "/style.css")
    with pytest.raises(HTTPNotFound):  # O_NOFOLLOW: the link is not opened, and not left to FileResponse
        files._small_file(request_, str(site / "link-out.txt"), checked)
    os.replace(site / "data.json", site / "style.css")  # another inode under the checked name
    with pytest.raises(HTTPNotFound):
        files._small_file(request_, str(site / "style.css"), checked)
    os.unlink(site / "style.css")
    os.mkfifo(site / "style.css")  # a FIFO swapped in: opened without blocking the loop, and refused
    with pytest.raises(HTTPNotFound):
        files._small_file(request_, str(site / "style.css"), checked)


def test_the_small_file_cache_never_serves_a_changed_file(site: Path) -> None:
    """The cache keys on device, inode, size, mtime and ctime: a rewrite that keeps the size and puts the
    modification time back (what fools a cache keyed on size and mtime) is still seen, as are a rename over
    the file and a truncation; a file changed in the last SETTLED seconds is not kept; the byte limit holds."""
    from multidict import CIMultiDict

    from tapster.services._web_static import SmallFileCache

    cache = SmallFileCache(limit=3000)
    cache.SETTLED = 0.0  # this test's files are seconds old at most; the rule itself is checked below
    path = site / "cached.txt"
    path.write_bytes(b"a" * 1000)
    before = path.stat()
    cache.put(str(path), before, path.read_bytes(), CIMultiDict(ETag='"x"'))
    hit = cache.get(str(path), path.stat())
    assert hit is not None and hit.body == b"a" * 1000 and hit.headers["ETag"] == '"x"'
    with open(path, "r+b") as rewrite:  # same size, same mtime afterwards: only the ctime tells
        rewrite.write(b"b" * 1000)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_size == before.st_size
    assert cache.get(str(path), path.stat()) is None
    cache.put(str(path), path.stat(), b"b" * 1000, CIMultiDict())
    (site / "other.txt").write_bytes(b"c" * 1000)
    os.replace(site / "other.txt", path)  # a rename over it: another inode
    assert cache.get(str(path), path.stat()) is None
    for name in ("one", "two", "three", "four"):  # 4 x 1000 bytes into 3000: the oldest goes
        (site / name).write_bytes(b"d" * 1000)
        cache.put(str(site / name), (site / name).stat(), b"d" * 1000, CIMultiDict())
    assert cache.get(str(site / "one"), (site / "one").stat()) is None
    assert all(cache.get(str(site / n), (site / n).stat()) is not None for n in ("two", "three", "four"))
    settled = SmallFileCache()
    (site / "fresh").write_bytes(b"e")
    settled.put(str(site / "fresh"), (site / "fresh").stat(), b"e", CIMultiDict())
    assert settled.get(str(site / "fresh"), (site / "fresh").stat()) is None  # changed just now: not kept


def test_a_cached_small_file_rewritten_in_place_is_served_new(
    tapster: type[TapsterProcess], site: Path
) -> None:
    """End to end: a settled file is served (and cached), rewritten with the same size and mtime, and the next
    request gets the new bytes."""
    page = site / "page.txt"
    page.write_bytes(b"old!" * 100)
    old = page.stat()
    os.utime(page, ns=(old.st_atime_ns, old.st_mtime_ns))
    from support import wait_until
    from tapster.services._web_static import SmallFileCache

    wait_until(
        lambda: time.time() - page.stat().st_ctime > SmallFileCache.SETTLED + 0.1, 10, "the file settled"
    )
    _, port = start_web(tapster, ["--path", str(site)])
    for _ in range(2):  # the first request fills the cache, the second is served from it
        assert request(port, "/page.txt")[1] == b"old!" * 100
    with open(page, "r+b") as rewrite:
        rewrite.write(b"new!" * 100)
    os.utime(page, ns=(old.st_atime_ns, old.st_mtime_ns))
    response, body = request(port, "/page.txt")
    assert body == b"new!" * 100
    assert response.headers["ETag"] == f'"{old.st_mtime_ns:x}-{old.st_size:x}"'  # FileResponse's rule, same


def move_reopen_and_request(access: Path, pidfile: Path, port: int, path: str) -> None:
    """logrotate's way: move the access log to ``ACCESS.moved``, `tapster ctl reopen`, then one request, whose
    line must arrive in a new file at the old path."""
    os.rename(access, access.with_name(access.name + ".moved"))
    result = run_tapster(["ctl", "reopen", "--pidfile", str(pidfile)], cwd=pidfile.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    request(port, path)
    wait_until(lambda: access.exists() and f"GET {path}" in access.read_text(), 10, "a line in the new file")


def reopen_then_rotate(access: Path, pidfile: Path, port: int) -> None:
    """logrotate's move + `ctl reopen`, then `ctl rotate`: each time the next line lands in a new file at the path."""
    move_reopen_and_request(access, pidfile, port, "/data.json")
    assert "GET /data.json" not in access.with_name(access.name + ".moved").read_text()
    result = run_tapster(["ctl", "rotate", "--pidfile", str(pidfile)], cwd=pidfile.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GET /data.json" in access.with_name(access.name + ".1").read_text()
    request(port, "/index.html")
    wait_until(
        lambda: access.exists() and "GET /index.html" in access.read_text(), 10, "a line after rotation"
    )


def test_the_access_log_file_follows_ctl_reopen_and_rotate(tapster: type[TapsterProcess], site: Path) -> None:
    """logrotate's way (move the file, then SIGHUP through `tapster ctl reopen`) and `tapster ctl rotate`
    (SIGUSR1) reach --access-log FILE as they reach the main log: new lines go to a new file at the path, never
    into the moved one."""
    cwd = site.parent
    access = cwd / "access.log"
    listen = ["--listen", "tcp:0:interface=127.0.0.1"]
    web = ["web", "--path", str(site), "--access-log", str(access), *listen]
    process = tapster(
        ["-n", "-o", "--pidfile", "t.pid", *web],
        cwd=cwd,
    )
    port = process.port("WebServer")
    request(port, "/style.css")
    wait_until(lambda: "GET /style.css" in access.read_text(), 10, "the first line in the access log")
    reopen_then_rotate(access, cwd / "t.pid", port)
    process.signal(signal.SIGTERM)
    assert process.finish()[0] == 0


def test_the_access_log_file_can_be_reopened_after_dropping_to_nobody(
    tapster: type[TapsterProcess], site: Path, shared_dir: Path
) -> None:
    """--access-log FILE is opened as root in privileged_start; after `-u nobody` a reopen must still work: the
    file is handed to nobody before the drop, like the main log (found by review: `ctl reopen` answered
    "Permission denied" and logrotate's move left the server writing to the moved file)."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    logs = shared_dir / "logs"
    logs.mkdir()
    os.chown(logs, nobody.pw_uid, nobody.pw_gid)  # nobody may create the new file after a move
    access = logs / "access.log"
    web = ["web", "--path", str(site), "--access-log", str(access), "--listen", "tcp:0:interface=127.0.0.1"]
    process = tapster(
        ["-n", "-o", "--pidfile", str(shared_dir / "t.pid"), "-u", "nobody", *web], cwd=shared_dir
    )
    port = process.port("WebServer")
    assert access.stat().st_uid == nobody.pw_uid
    move_reopen_and_request(access, shared_dir / "t.pid", port, "/style.css")
    assert access.stat().st_uid == nobody.pw_uid
    process.signal(signal.SIGTERM)
    assert process.finish()[0] == 0


def test_the_small_file_cache_bounds_its_entries_too(site: Path) -> None:
    """Empty files cost the byte limit nothing: the number of entries has its own bound."""
    from multidict import CIMultiDict

    from tapster.services._web_static import SmallFileCache

    cache = SmallFileCache()
    cache.SETTLED = 0.0
    cache.MAX_ENTRIES = 10
    (site / "void.txt").write_bytes(b"")
    st = (site / "void.txt").stat()
    for number in range(25):
        cache.put(f"{site}/empty-{number}", st, b"", CIMultiDict())
    assert sum(cache.get(f"{site}/empty-{number}", st) is not None for number in range(25)) == 10


SWAP_CASES = [
    pytest.param("/d/f.txt", {}, b"inside\n", b"SECRET\n", id="small-file"),
    pytest.param("/d/f.txt", {"Range": "bytes=0-3"}, b"insi", b"SECR", id="range-via-FileResponse"),
    pytest.param(
        "/d/f.txt",
        {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
        b"inside\n",
        b"SECRET\n",
        id="conditional",
    ),
    pytest.param("/d/big.bin", {}, b"i" * 100_000, b"S" * 100_000, id="large-file-via-FileResponse"),
    pytest.param("/d/", {}, b"<p>inside</p>", b"<p>SECRET</p>", id="index-file"),
    pytest.param("/d/", {"Range": "bytes=0-5"}, b"<p>ins", b"<p>SEC", id="index-file-range"),
]


@pytest.mark.parametrize(("path", "headers", "inside", "secret"), SWAP_CASES)
def test_a_directory_swapped_for_a_link_under_load_never_leaks_a_file(
    tmp_path: Path, path: str, headers: dict[str, str], inside: bytes, secret: bytes
) -> None:
    """A thread swaps the served directory d with a link to a directory outside the root, as fast as it can
    (renameat2 RENAME_EXCHANGE), while requests run: every answer is the inside file or a 404, never the outside
    one. Small files are opened segment by segment without following links; files FileResponse sends (large
    files, ranges, conditional requests, index files) are opened the same way and FileResponse is given
    /proc/self/fd/N. (Before, a review's run served the outside small file 448 times in 5 s, and FileResponse's
    path-based open kept the race for the others.)"""
    import ctypes
    import threading

    from aiohttp import web as aioweb
    from aiohttp.test_utils import TestClient, TestServer

    from tapster.services._web_static import StaticFiles

    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        pytest.skip("no renameat2 in this C library")
    root, outside = tmp_path / "www", tmp_path / "outside"
    (root / "d").mkdir(parents=True)
    outside.mkdir()
    for where, body in ((root / "d", inside), (outside, secret)):
        (where / "f.txt").write_bytes(body if path == "/d/f.txt" else b"-")
        (where / "big.bin").write_bytes(body if path == "/d/big.bin" else b"-")
        (where / "index.html").write_bytes(body if path == "/d/" else b"-")
    os.symlink(outside, root / "e")
    swapping = threading.Event()
    swapping.set()

    def swap() -> None:
        a, b = str(root / "d").encode(), str(root / "e").encode()
        while swapping.is_set():
            if libc.renameat2(-100, a, -100, b, 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
                swapping.clear()

    async def scenario() -> dict[tuple[int, bytes], int]:
        files = StaticFiles(str(root))

        async def handle(request: aioweb.Request) -> aioweb.StreamResponse:
            return await files(request)

        app = aioweb.Application()
        app.router.add_route("*", "/{path:.*}", handle)
        seen: dict[tuple[int, bytes], int] = {}
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and swapping.is_set():
                response = await client.get(path, headers=headers)
                body = await response.read() if response.status in (200, 206) else b""
                seen[(response.status, body)] = seen.get((response.status, body), 0) + 1
        return seen

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    try:
        seen = asyncio.run(scenario())
    finally:
        if not swapping.is_set():
            pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here")
        swapping.clear()
        swapper.join(5)
    summary = {(status, body[:16]): count for (status, body), count in seen.items()}
    assert not any(secret in body for (_, body) in seen), summary
    assert any(body == inside for (_, body) in seen), summary


def test_files_held_for_file_response_are_closed_after_every_kind_of_answer(tmp_path: Path) -> None:
    """The descriptor a large file is held by while FileResponse sends it is closed after a 200, a HEAD, a 206, a
    304, and a client that hangs up before reading: no descriptor of the file is left open afterwards."""
    import gc

    from aiohttp import web as aioweb
    from aiohttp.test_utils import TestClient, TestServer

    from tapster.services._web_static import StaticFiles

    root = tmp_path / "www"
    root.mkdir()
    big = root / "big.bin"
    big.write_bytes(os.urandom(2 << 20))

    def held() -> int:
        count = 0
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/self/fd/{fd}") == str(big)
        return count

    async def scenario() -> None:
        files = StaticFiles(str(root))

        async def handle(request: aioweb.Request) -> aioweb.StreamResponse:
            return await files(request)

        app = aioweb.Application()
        app.router.add_route("*", "/{path:.*}", handle)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            first = await client.get("/big.bin")
            assert first.status == 200 and await first.read() == big.read_bytes()
            etag = first.headers["ETag"]
            for _ in range(5):
                assert (await client.head("/big.bin")).status == 200
                ranged = await client.get("/big.bin", headers={"Range": "bytes=10-19"})
                assert ranged.status == 206 and await ranged.read() == big.read_bytes()[10:20]
                assert (await client.get("/big.bin", headers={"If-None-Match": etag})).status == 304
                hung_up = await client.get("/big.bin")
                hung_up.close()  # the connection is dropped with most of the body unsent
            deadline = time.monotonic() + 10
            while held() and time.monotonic() < deadline:
                gc.collect()
                await asyncio.sleep(0.05)
            assert held() == 0

    asyncio.run(scenario())


def test_after_dropping_to_nobody_large_files_and_ranges_are_served(
    tapster: type[TapsterProcess], shared_dir: Path
) -> None:
    """Files FileResponse sends go through the loop's thread pool, whose module Python imports on first use: after
    `-u nobody` that import can fail (an interpreter in a directory nobody cannot read, as here, or a --chroot
    without the standard library), and every large file, range and 304 was a 500 with a traceback. The module
    is loaded before the switch now."""
    docroot = shared_dir / "www"
    docroot.mkdir()
    docroot.chmod(0o755)
    big = docroot / "big.bin"
    big.write_bytes(os.urandom(200_000))
    big.chmod(0o644)
    web = ["web", "--path", str(docroot), "--listen", "tcp:0:interface=127.0.0.1"]
    process = tapster(["-n", "-o", "--pidfile=", "-u", "nobody", *web], cwd=shared_dir)
    port = process.port("WebServer")
    response, body = request(port, "/big.bin")
    assert response.status == 200 and body == big.read_bytes()
    response, body = request(port, "/big.bin", headers={"Range": "bytes=5-9"})
    assert response.status == 206 and body == big.read_bytes()[5:10]
    process.signal(signal.SIGTERM)
    status, out, _ = process.finish()
    assert status == 0 and "Traceback" not in out


def test_with_workers_the_master_writes_the_access_log_file_and_follows_ctl(
    tapster: type[TapsterProcess], site: Path
) -> None:
    """`--workers 2` with `--access-log FILE`: the workers send their lines to the master, which alone has the file
    open, so `ctl reopen` after a move and `ctl rotate` reach it as in one process (each worker used to open the
    file itself, rotate it on its own count and never follow the signals: after logrotate's move every worker
    went on filling the moved copy). Lines from both workers arrive, whole."""
    cwd = site.parent
    access = cwd / "access.log"
    web = ["web", "--path", str(site), "--access-log", str(access), "--listen", "tcp:0:interface=127.0.0.1"]
    process = tapster(["-n", "-o", "--pidfile", "t.pid", "--workers", "2", *web], cwd=cwd)
    port = process.port("WebServer")
    process.wait_for(r"worker 1 ready", timeout=20)
    process.wait_for(r"worker 2 ready", timeout=20)
    for _ in range(40):  # new connections: both workers get some
        request(port, "/style.css")
    wait_until(lambda: access.read_text().count("GET /style.css") == 40, 10, "40 lines in the access log")
    assert all(line.startswith("127.0.0.1 - - [") for line in access.read_text().splitlines())
    reopen_then_rotate(access, cwd / "t.pid", port)
    process.signal(signal.SIGTERM)
    status, out, _ = process.finish()
    assert status == 0 and "GET /style.css" not in out  # the access lines went to the file, not the main log


def test_a_held_file_is_not_closed_under_a_cancelled_prepare(tmp_path: Path) -> None:
    """A shutdown cancels prepare() while FileResponse's open of /proc/self/fd/N may still be on the thread pool:
    closing N then could let the pool open whatever file takes the number next (found by review). N stays open
    until the response is collected, which the pool's job delays until it is done."""
    import concurrent.futures
    import gc
    import threading

    from aiohttp.test_utils import make_mocked_request

    from tapster.services._web_static import StaticFiles

    root = tmp_path / "www"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(200_000))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        loop.set_default_executor(pool)
        gate = threading.Event()
        blocker = loop.run_in_executor(None, gate.wait)  # the pool's one thread is busy: the open waits
        try:
            request = make_mocked_request("GET", "/big.bin")
            response = await StaticFiles(str(root))(request)
            fd = response._release.peek()[2][0]  # type: ignore[attr-defined]
            preparing = asyncio.ensure_future(response.prepare(request))
            await asyncio.sleep(0.05)
            preparing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await preparing
            assert fd_is_open(fd) and os.readlink(f"/proc/self/fd/{fd}") == str(root / "big.bin")
        finally:
            gate.set()  # a failed assertion must not leave the pool's thread waiting for ever
            await blocker
        del response, preparing
        gc.collect()
        assert not fd_is_open(fd) or os.readlink(f"/proc/self/fd/{fd}") != str(root / "big.bin")

    asyncio.run(scenario())
