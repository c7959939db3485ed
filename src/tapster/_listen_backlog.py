"""The accept queue length a listening socket already has, so adopting it does not change it.

asyncio's and uvloop's ``create_server(sock=...)`` call ``listen()`` on the socket again, and a second
``listen()`` replaces the queue length (systemd's ``Backlog=``, or whatever the process that created the socket
asked for). Reading the current length first and passing it back keeps it as it was. Linux reports it for a TCP
socket in ``TCP_INFO`` (a listening socket's ``tcpi_sacked`` is its maximum backlog) and for a unix socket
through the ``sock_diag`` netlink interface (``UNIX_DIAG_RQLEN``: the write queue of a listening socket is its
maximum backlog), which needs the kernel's ``unix_diag`` support.
"""

from __future__ import annotations

import os
import socket
import struct

__all__ = ["listen_backlog"]

_TCP_LISTEN = 10  # the kernel's TCP_LISTEN state, shared by unix sockets
_TCP_INFO_HEAD = struct.Struct("=B7xIIIIII")  # state, (7 bytes), rto, ato, snd_mss, rcv_mss, unacked, sacked

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_UDIAG_SHOW_RQLEN = 0x10
_UNIX_DIAG_RQLEN = 4
_NO_COOKIE = 0xFFFFFFFF
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_UNIX_DIAG_REQ = struct.Struct("=BBHIII2I")  # family, protocol, pad, states, inode, show, cookie
_UNIX_DIAG_MSG = struct.Struct("=BBBBI2I")  # family, type, state, pad, inode, cookie
_RTATTR = struct.Struct("=HH")  # length, type
_RQLEN = struct.Struct("=II")  # receive queue (pending connections), write queue (maximum backlog)


def listen_backlog(sock: socket.socket) -> int | None:
    """The maximum accept queue length of listening ``sock``; None if it is not listening or cannot be read."""
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return _tcp_backlog(sock)
        if sock.family == socket.AF_UNIX:
            return _unix_backlog(sock.fileno())
    except (OSError, struct.error):
        return None
    return None


def _tcp_backlog(sock: socket.socket) -> int | None:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_HEAD.size)
    state, _rto, _ato, _snd_mss, _rcv_mss, _unacked, sacked = _TCP_INFO_HEAD.unpack_from(info)
    return sacked if state == _TCP_LISTEN else None


def _unix_backlog(fd: int) -> int | None:
    """Ask sock_diag about the socket with this fd's inode: one request, one answer."""
    request = _UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, 0, 1 << _TCP_LISTEN, os.fstat(fd).st_ino, _UDIAG_SHOW_RQLEN, _NO_COOKIE, _NO_COOKIE
    )
    header = _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.sendto(header + request, (0, 0))
        answer = nl.recv(8192)
    length, kind, _flags, _seq, _port = _NLMSG_HEADER.unpack_from(answer)
    if kind != _SOCK_DIAG_BY_FAMILY:  # NLMSG_ERROR: no unix_diag in this kernel, or no such socket
        return None
    _family, _type, state, _pad, _inode, _c0, _c1 = _UNIX_DIAG_MSG.unpack_from(answer, _NLMSG_HEADER.size)
    if state != _TCP_LISTEN:
        return None
    offset = _NLMSG_HEADER.size + _UNIX_DIAG_MSG.size
    end = min(length, len(answer))
    while offset + _RTATTR.size <= end:
        size, attribute = _RTATTR.unpack_from(answer, offset)
        if size < _RTATTR.size:
            break
        if attribute == _UNIX_DIAG_RQLEN:
            _pending, maximum = _RQLEN.unpack_from(answer, offset + _RTATTR.size)
            return int(maximum)
        offset += (size + 3) & ~3
    return None
