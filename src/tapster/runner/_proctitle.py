"""The process title ``tapster: NAME``, so ``ps`` and ``top`` say which server a process is."""

from __future__ import annotations


def set_process_title(title: str) -> str:
    """Set the title; return how: ``setproctitle`` (the whole command line, as ps shows it) or ``prctl``.

    Without the setproctitle package (the ``all`` extra) only the kernel's short name (``/proc/PID/comm``,
    15 bytes, what ``top`` shows) can be changed, through ``prctl(PR_SET_NAME)``.
    """
    try:
        import setproctitle
    except ImportError:
        pass
    else:
        setproctitle.setproctitle(title)
        return "setproctitle"
    import ctypes
    import ctypes.util

    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return "unchanged"
    libc = ctypes.CDLL(libc_name, use_errno=True)
    pr_set_name = 15
    libc.prctl(pr_set_name, title.encode("utf-8", "replace")[:15], 0, 0, 0)
    return "prctl"
