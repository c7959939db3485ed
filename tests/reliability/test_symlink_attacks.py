"""Symbolic links, FIFOs, hard links and hostile pickles planted where a root server opens its files.

Every case starts a real ``tapster`` process as root against what another user could have planted: the pid file
path in a shared directory, a ``.tap`` given to ``-f``. The promise: the server refuses with one line naming the
path and exit 1, the attacker's target is neither created nor changed, and no code from a saved state runs
(a marker file the malicious pickle would create never appears).
"""

from __future__ import annotations

import builtins
import hashlib
import os
import pickle
import pwd
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, TAPSTER, run_tapster
from reliability.conftest import root_only, scale
from tapster._state_pickle import referenced_modules
from tapster.persist import HEADER

Figures = Any  # the figures fixture's type (tests/reliability/conftest.py's Figures)

ECHO = str(EXAMPLES / "echo.tac")
ENV = {"ECHO_PORT": "0"}


def nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:  # pragma: no cover - every Debian has it
        pytest.skip("no user 'nobody'")


def fingerprint(path: Path) -> tuple[str, int, int]:
    """Content hash, size and mtime: what an attack through a link would change."""
    info = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), info.st_size, info.st_mtime_ns


def one_line_refusal(result: subprocess.CompletedProcess[str], expected: str) -> bool:
    lines = result.stderr.strip().splitlines()
    return (
        result.returncode == 1
        and len(lines) == 1
        and lines[0] == f"tapster: {expected}"
        and "Traceback" not in result.stderr + result.stdout
    )


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A world-writable sticky directory, like /tmp or a careless /var/run/app, where the attacker plants."""
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o1777)
    return directory


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A root-owned file with content, in a root-only directory: the attacker's target."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o700)
    target = etc / "shadow"
    target.write_text("root:$6$precious:19000:0:99999:7:::\n")
    target.chmod(0o600)
    return target


# --- the pid file ---


def plant_symlink(shared: Path, secret: Path) -> tuple[Path, Path]:
    link = shared / "app.pid"
    link.symlink_to(secret)
    user = nobody()
    os.lchown(link, user.pw_uid, user.pw_gid)  # planted by another user
    return link, secret


def plant_dangling(shared: Path, secret: Path) -> tuple[Path, Path]:
    target = secret.parent / "created-by-attacker"
    link = shared / "app.pid"
    link.symlink_to(target)
    user = nobody()
    os.lchown(link, user.pw_uid, user.pw_gid)
    return link, target


def plant_fifo(shared: Path, secret: Path) -> tuple[Path, Path]:
    fifo = shared / "app.pid"
    os.mkfifo(fifo)
    return fifo, secret


def plant_hard_link(shared: Path, secret: Path) -> tuple[Path, Path]:
    # protected_hardlinks stops nobody from making this link; an older kernel, or root by mistake, would not
    link = shared.parent / "etc" / "app.pid"
    os.link(secret, link)
    return link, secret


PID_CASES: dict[str, tuple[Callable[[Path, Path], tuple[Path, Path]], str]] = {
    "symlink to a root file with content": (plant_symlink, "it is a symbolic link"),
    "dangling symlink": (plant_dangling, "it is a symbolic link"),
    "FIFO": (plant_fifo, "a FIFO, not a regular file"),
    "hard link to a root file": (
        plant_hard_link,
        "it has 2 hard links (another name may point at the same file)",
    ),
}


@root_only
@pytest.mark.parametrize("daemon", [False, True], ids=["foreground", "daemon"])
@pytest.mark.parametrize("case", PID_CASES)
def test_planted_pid_file_is_refused(
    tmp_path: Path, shared: Path, secret: Path, figures: Figures, case: str, daemon: bool
) -> None:
    """One line naming the pid file, exit 1, quickly (a FIFO does not block); the target is untouched."""
    plant, reason = PID_CASES[case]
    path, target = plant(shared, secret)
    before = fingerprint(target) if target.exists() else None
    mode = ["--logfile", str(tmp_path / "t.log")] if daemon else ["-n"]
    started = time.monotonic()
    result = run_tapster([*mode, "-y", ECHO, "--pidfile", str(path)], cwd=tmp_path, env=ENV, timeout=60)
    elapsed = time.monotonic() - started
    refused = one_line_refusal(result, f"refusing pid file {path}: {reason}")
    untouched = (not target.exists()) if before is None else fingerprint(target) == before
    held = refused and untouched and elapsed < 10
    figures.record(
        f"pid file: {case} ({'daemon' if daemon else '-n'})",
        f"exit {result.returncode}, {len(result.stderr.strip().splitlines())} line, target "
        f"{'untouched' if untouched else 'CHANGED'}, {elapsed * 1000:.0f} ms",
        "exit 1, 1 line naming the path, target untouched, < 10 s",
        held,
    )
    assert refused, (result.returncode, result.stdout, result.stderr)
    assert untouched
    assert elapsed < 10


@root_only
def test_ctl_never_follows_a_planted_pid_file(tmp_path: Path, shared: Path, figures: Figures) -> None:
    """A link at the pid path pointing at a live server's pid file: ctl stop refuses instead of killing it."""
    victim_pidfile = tmp_path / "victim.pid"
    victim = subprocess.Popen(
        [*TAPSTER, "-n", "-y", ECHO, "--pidfile", str(victim_pidfile)],
        cwd=tmp_path,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert victim.stdout is not None
        for line in victim.stdout:
            if "starting on" in line:
                break
        link = shared / "app.pid"
        link.symlink_to(victim_pidfile)
        result = run_tapster(["ctl", "stop", "--pidfile", str(link), "--timeout", "5"], cwd=tmp_path)
        alive = victim.poll() is None
        refused = result.returncode == 1 and f"{link}: it is a symbolic link" in result.stderr
        figures.record(
            "ctl stop through a symlink to a live server's pid file",
            f"exit {result.returncode}, server {'alive' if alive else 'KILLED'}",
            "refused, server alive",
            refused and alive,
        )
        assert refused, (result.returncode, result.stdout, result.stderr)
        assert alive
    finally:
        victim.send_signal(signal.SIGTERM)
        victim.communicate(timeout=30)


@root_only
def test_pid_file_still_locks_restarts_and_races(tmp_path: Path, figures: Figures) -> None:
    """The safe open keeps what held before: restarts after kill -9 and exactly one winner of simultaneous starts."""
    pidfile = tmp_path / "app.pid"
    restarts = scale(3, 20)
    taken_over = 0
    for _ in range(restarts):
        proc = subprocess.Popen(
            [*TAPSTER, "-n", "-y", ECHO, "--pidfile", str(pidfile)],
            cwd=tmp_path,
            env={**os.environ, **ENV},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "starting on" in line:
                break
        proc.kill()
        proc.communicate(timeout=30)
        taken_over += any("Removing stale pid file" in line for line in lines)
    racers = scale(8, 50)
    procs = [
        subprocess.Popen(
            [*TAPSTER, "-n", "-y", ECHO, "--pidfile", str(pidfile)],
            cwd=tmp_path,
            env={**os.environ, **ENV},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(racers)
    ]
    deadline = time.monotonic() + 60
    while sum(proc.poll() is not None for proc in procs) < racers - 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the racers' exits, bounded by the deadline
    losers = 0
    for proc in procs:
        if proc.poll() is not None:
            _, err = proc.communicate()
            losers += proc.returncode == 1 and "Another server is running" in err
    winners = [proc for proc in procs if proc.poll() is None]
    for proc in winners:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    figures.record(
        "pid file (safe open): restarts after kill -9",
        f"{taken_over + 1}/{restarts} started (first run had no leftover)",
        "every restart takes the leftover over",
        taken_over == restarts - 1,
    )
    figures.record(
        "pid file (safe open): simultaneous starts",
        f"{len(winners)} winner, {losers}/{racers - 1} refused",
        "exactly one winner",
        len(winners) == 1 and losers == racers - 1,
    )
    assert taken_over == restarts - 1
    assert len(winners) == 1 and losers == racers - 1
    assert not pidfile.exists()


# --- saved state ---


class Reduced:
    """Pickles as ``func(*args)``: the shape of every malicious pickle."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.func, self.args)


def state_bytes(data: bytes, modules: list[str] | None = None) -> bytes:
    listed = referenced_modules(data) if modules is None else modules
    return HEADER + b"modules: " + " ".join(listed).encode() + b"\n" + data


def malicious_states(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name: (file content, the module.attr the refusal names) for pickles that would create ``marker``."""
    code = f"open({str(marker)!r}, 'w').close()"
    unlisted = b"\x80\x02cevilmod_xyz\nThing\n)\x81."  # an import of a module the header does not list
    return {
        "os.system": (
            state_bytes(pickle.dumps(Reduced(os.system, f"touch {marker}"), protocol=5)),
            "posix.system",
        ),
        "builtins.exec": (
            state_bytes(pickle.dumps(Reduced(builtins.exec, code), protocol=5)),
            "builtins.exec",
        ),
        "subprocess.Popen": (
            state_bytes(pickle.dumps(Reduced(subprocess.Popen, ["touch", str(marker)]), protocol=5)),
            "subprocess.Popen",
        ),
        "import of an unlisted module": (state_bytes(unlisted, ["tapster.service"]), "evilmod_xyz.Thing"),
    }


def marker_module(directory: Path, marker: Path) -> dict[str, str]:
    """A module that creates ``marker`` when imported, on the server's PYTHONPATH."""
    (directory / "evilmod_xyz.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Thing:\n    pass\n")
    return {"PYTHONPATH": str(directory)}


@root_only
@pytest.mark.parametrize("where", ["0700 directory", "0777 directory"])
@pytest.mark.parametrize(
    "case", ["os.system", "builtins.exec", "subprocess.Popen", "import of an unlisted module"]
)
def test_malicious_state_never_runs(tmp_path: Path, figures: Figures, case: str, where: str) -> None:
    """A 0600 root-owned .tap holding a pickle that would create a marker: refused, one line, no marker."""
    marker = tmp_path / "marker"
    modules = tmp_path / "modules"
    modules.mkdir()
    env = marker_module(modules, marker)
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    content, names = malicious_states(marker)[case]
    path = directory / "evil.tap"
    path.write_bytes(content)
    path.chmod(0o600)
    if where == "0777 directory":
        directory.chmod(0o777)
        expected = (
            f"refusing to load {path}: its directory {directory} is writable by others (and not sticky), so "
            "another user could have replaced it; a saved state is code: use --trust-state-file only if you "
            "trust it"
        )
    else:
        expected = f"refusing to load {path}: it names {names}"
    result = run_tapster(["-n", "-f", str(path), "--pidfile="], cwd=tmp_path, env=env)
    line = result.stderr.strip()
    refused = (
        result.returncode == 1
        and len(line.splitlines()) == 1
        and line.startswith(f"tapster: {expected}")
        and "Traceback" not in result.stderr
    )
    ran = marker.exists()
    figures.record(
        f"malicious .tap ({case}) in a {where}",
        f"exit {result.returncode}, {len(line.splitlines())} line, marker {'CREATED' if ran else 'absent'}",
        "exit 1, 1 line naming it, marker absent",
        refused and not ran,
    )
    assert refused, (result.returncode, result.stdout, result.stderr)
    assert not ran


def make_state(directory: Path) -> Path:
    """A genuine saved state (the echo tree as -f would save it), written by tapster's own save_state."""
    script = (
        "import sys; from tapster import Application; from tapster.services import StreamServer;"
        "from tapster.persist import save_state;"
        "app = Application('plain'); StreamServer('tcp:0:interface=127.0.0.1', dict).set_parent(app);"
        "save_state(app, sys.argv[1])"
    )
    path = directory / "plain.tap"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    return path


@root_only
def test_state_file_that_is_a_symlink_is_refused(tmp_path: Path, shared: Path, figures: Figures) -> None:
    """A .tap planted by another user as a link to a genuine state: refused, even with --trust-state-file."""
    real = make_state(tmp_path)
    link = shared / "app.tap"
    link.symlink_to(real)
    user = nobody()
    os.lchown(link, user.pw_uid, user.pw_gid)
    outcomes = []
    for extra in ([], ["--trust-state-file"]):
        result = run_tapster(["-n", "-f", str(link), "--pidfile=", *extra], cwd=tmp_path)
        outcomes.append(one_line_refusal(result, f"refusing to load {link}: it is a symbolic link"))
    figures.record(
        ".tap that is a symlink (with and without --trust-state-file)",
        f"{sum(outcomes)}/2 refused with one line",
        "2/2 refused",
        all(outcomes),
    )
    assert all(outcomes)


@root_only
def test_state_file_owned_by_nobody_is_refused(tmp_path: Path, figures: Figures) -> None:
    """A genuine state owned by another user is refused without --trust-state-file, loaded with it."""
    path = make_state(tmp_path)
    user = nobody()
    os.chown(path, user.pw_uid, user.pw_gid)
    result = run_tapster(["-n", "-f", str(path), "--pidfile="], cwd=tmp_path)
    refused = one_line_refusal(
        result,
        f"refusing to load {path}: it is owned by uid {user.pw_uid}, not by uid 0; a saved state is code: "
        "use --trust-state-file only if you trust it",
    )
    figures.record(
        ".tap owned by nobody",
        f"exit {result.returncode}, {len(result.stderr.strip().splitlines())} line",
        "exit 1, 1 line naming the owner",
        refused,
    )
    assert refused, (result.returncode, result.stdout, result.stderr)


@root_only
def test_dash_f_directory_is_one_line(tmp_path: Path, figures: Figures) -> None:
    directory = tmp_path / "states"
    directory.mkdir()
    result = run_tapster(["-n", "-f", "states", "--pidfile="], cwd=tmp_path)
    refused = one_line_refusal(result, "refusing to load states: a directory, not a regular file")
    figures.record(
        "-f DIR",
        f"exit {result.returncode}, {len(result.stderr.strip().splitlines())} line",
        "exit 1, 1 line",
        refused,
    )
    assert refused, (result.returncode, result.stdout, result.stderr)


@root_only
def test_state_file_mode_is_private(tmp_path: Path) -> None:
    """The genuine state tapster writes is 0600, so the checks above never refuse tapster's own files."""
    path = make_state(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@root_only
def test_state_whose_unpickling_raises_is_one_line(tmp_path: Path, figures: Figures) -> None:
    """A well-formed state whose objects raise while being built (int('x')) is one line, exit 1."""
    path = tmp_path / "raises.tap"
    path.write_bytes(state_bytes(pickle.dumps(Reduced(int, "x"), protocol=5)))
    path.chmod(0o600)
    result = run_tapster(["-n", "-f", str(path), "--pidfile="], cwd=tmp_path)
    refused = one_line_refusal(
        result,
        f"saved state {path} cannot be loaded: ValueError: invalid literal for int() with base 10: 'x'",
    )
    figures.record(
        ".tap whose unpickling raises",
        f"exit {result.returncode}, {len(result.stderr.strip().splitlines())} line",
        "exit 1, 1 line",
        refused,
    )
    assert refused, (result.returncode, result.stdout, result.stderr)


@root_only
def test_saving_over_a_planted_symlink_replaces_it(
    tmp_path: Path, shared: Path, secret: Path, figures: Figures, tapster: Any
) -> None:
    """NAME-shutdown.tap planted as a link in a shared run directory: the save replaces the link, not the target."""
    state = make_state(tmp_path)
    saved = shared / "plain-shutdown.tap"
    saved.symlink_to(secret)
    user = nobody()
    os.lchown(saved, user.pw_uid, user.pw_gid)
    before = fingerprint(secret)
    proc = tapster(["-n", "-f", str(state), "-d", str(shared), "--pidfile="], cwd=tmp_path)
    proc.wait_for("starting on")
    proc.signal(signal.SIGTERM)
    status, out, err = proc.finish()
    untouched = fingerprint(secret) == before
    replaced = (
        not saved.is_symlink() and saved.stat().st_uid == 0 and stat.S_IMODE(saved.stat().st_mode) == 0o600
    )
    figures.record(
        "save at stop onto a planted NAME-shutdown.tap symlink",
        f"target {'untouched' if untouched else 'CHANGED'}, link {'replaced by a 0600 file' if replaced else 'KEPT'}",
        "target untouched, link replaced",
        untouched and replaced and status == 0,
    )
    assert status == 0, err
    assert "Saved application state to plain-shutdown.tap." in out
    assert untouched and replaced
