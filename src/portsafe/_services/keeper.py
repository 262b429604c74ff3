"""The lease keeper: holds reservations for ``portsafe reserve`` after the command exits.

A reservation is held by a process (a name on Linux, a lock elsewhere) and ends with it;
a port printed by a command that then exits would be held by no one. So
``PORT=$(portsafe)`` asks a *keeper* to reserve the port and hold it for a lease.

Theory of operation (the client half, finding and starting a keeper, is
:mod:`portsafe._services.keeper_client`):

1. One keeper per user, network namespace and reservation settings
   (``PORTSAFE_RANGE``, ``PORTSAFE_EXCLUDE``, and where ports are held by lock files,
   ``PORTSAFE_LOCK_DIR``: a keeper with other settings would reserve elsewhere),
   detached: its own session, ``/`` as working directory and ``/dev/null`` as stdio, so
   it never holds the caller's terminal or pipes open.
2. It serves the listening socket its starter bound and passed down (``--fd``). Every
   connection's peer is checked at ``accept`` (``SO_PEERCRED``), before a byte is read:
   another user's connections are closed at once, so thousands of them cost nothing.
3. Requests are one JSON object per connection and line, at most 4 KiB, within 2 s of
   the connection; answers likewise. A malformed request gets an error reply; nothing
   a client sends ends the keeper (it holds everyone's leases).
4. It reserves through the public core (``reserve_ports``) and releases each port when
   its lease ends or on ``release``; it exits once it has held nothing for
   ``PORTSAFE_KEEPER_IDLE`` seconds (default 30). Killed, it loses its leases, and the
   kernel releases its ports. It holds them through the core's lock table like any
   process, so nothing here depends on how (names or lock files).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time

from portsafe._errors import PortsafeError
from portsafe._services.keeper_client import (
    DEFAULT_IDLE,
    PROTOCOL,
    keeper_address,
)
from portsafe._services.requestloop import RequestLoop
from portsafe._unixsock import bind_unix, peer_credentials

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from portsafe._core.reservation import Reservation

__all__ = ["Keeper", "main"]

_FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6, "both": socket.AF_UNSPEC}
_SOCKTYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "both": 0}
MAX_REQUEST = 4096
CONNECTION_TIMEOUT = 2.0
MAX_LEASE = 1e9
MAX_PORTS = 65535


class Keeper:
    """The keeper's lease book.

    Args:
        idle: Seconds to stay alive holding nothing.

    Example:
        >>> k = Keeper(idle=1.0)
        >>> json.loads(k.handle(b'{"op": "ping"}', None, None) or b"")["ok"]
        True
    """

    def __init__(self, *, idle: float) -> None:
        self.idle = idle
        self.leases: dict[int, tuple[Reservation, float, int | None]] = {}
        self.last_active = time.monotonic()
        self.stop: object = None  # set to the loop's stop() by main()

    def handle(self, line: bytes, pid: int | None, uid: int | None) -> bytes | None:
        """Answer one JSON request line; refuse other users silently.

        Never raises: whatever a client sends, the keeper (holding every lease of its
        user) stays up and answers with ``{"ok": false, "kind": ..., "error": ...}``.

        Args:
            line: The request.
            pid: The sender's pid, if known.
            uid: The sender's uid, if known.

        Returns:
            The JSON reply line, or None to drop the connection.

        Example:
            >>> k = Keeper(idle=1.0)
            >>> json.loads(k.handle(b"[" * 2000, None, None) or b"")["kind"]
            'BadRequest'
        """
        if uid is not None and uid != os.getuid():
            return None
        self.last_active = time.monotonic()
        try:
            request = _parse_request(line)
        except Exception as exc:  # noqa: BLE001 - RecursionError, UnicodeError, ...
            return _reply({"ok": False, "kind": "BadRequest",
                           "error": f"malformed request ({type(exc).__name__}): send one "
                           "JSON object on one line"})
        try:
            reply = self._dispatch(request, pid)
        except PortsafeError as exc:
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            reply = {"ok": False, "kind": type(exc).__name__, "error": message}
            if hasattr(exc, "candidates"):
                reply["candidates"] = exc.candidates
        except (ValueError, TypeError, KeyError) as exc:
            reply = {"ok": False, "kind": "InvalidSettingError", "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug must not drop every lease
            reply = {"ok": False, "kind": "KeeperError", "error": f"{type(exc).__name__}: {exc}"}
        return _reply(reply)

    def _dispatch(self, request: dict[str, object], pid: int | None) -> dict[str, object]:
        op = request.get("op")
        now = time.monotonic()
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "protocol": PROTOCOL}
        if op == "list":
            leases = [{"port": port, "expires_in": round(max(exp - now, 0.0), 3),
                       "requester": who} for port, (_r, exp, who) in sorted(self.leases.items())]
            return {"ok": True, "pid": os.getpid(), "leases": leases}
        if op == "release":
            port = request.get("port")
            entry = self.leases.pop(port, None) if type(port) is int else None
            if entry is not None:
                entry[0].release()
            return {"ok": True, "released": entry is not None}
        if op == "reserve":
            return self._reserve(request, pid, now)
        raise ValueError(f"unknown request {op!r}")

    def _reserve(self, request: dict[str, object], pid: int | None,
                 now: float) -> dict[str, object]:
        from portsafe._core.reserve import reserve_ports  # keep startup cheap

        n, lease, lo_hi = request.get("n", 1), request.get("lease"), request.get("range")
        if type(n) is not int or not 1 <= n <= MAX_PORTS:
            raise ValueError(f"n must be a whole number in 1..{MAX_PORTS}")
        if (type(lease) not in (int, float) or not math.isfinite(lease)  # type: ignore[arg-type]
                or not 0 < lease <= MAX_LEASE):  # type: ignore[operator]
            raise ValueError(f"lease must be a number of seconds in (0, {MAX_LEASE:g}]")
        ports = None
        if lo_hi is not None:
            if not (isinstance(lo_hi, list) and len(lo_hi) == 2
                    and all(type(x) is int for x in lo_hi)):
                raise ValueError("range must be [low, high]")
            ports = range(lo_hi[0], lo_hi[1] + 1)
        host = request.get("host")
        group = reserve_ports(
            n, contiguous=request.get("contiguous") is True,
            host=host if isinstance(host, str) else None,
            family=_FAMILIES[str(request.get("family", "ipv4"))],
            socktype=_SOCKTYPES[str(request.get("socktype", "tcp"))], ports=ports,
        )
        for reservation in group:
            self.leases[reservation.port] = (reservation, now + float(lease), pid)  # type: ignore[arg-type]
        return {"ok": True, "ports": list(group.ports), "pid": os.getpid(),
                "expires_in": float(lease)}  # type: ignore[arg-type]

    def tick(self) -> None:
        """Release expired leases; stop the keeper once idle long enough.

        Example:
            >>> Keeper(idle=60.0).tick()
        """
        now = time.monotonic()
        for port in [p for p, (_r, exp, _w) in self.leases.items() if exp <= now]:
            self.leases.pop(port)[0].release()
            self.last_active = now
        if not self.leases and now - self.last_active >= self.idle and callable(self.stop):
            self.stop()


def _reply(reply: dict[str, object]) -> bytes:
    return json.dumps(reply).encode() + b"\n"


def _parse_request(line: bytes) -> dict[str, object]:
    request = json.loads(line)
    if not isinstance(request, dict):
        raise TypeError("request must be a JSON object")
    return request


class OwnUserListener(socket.socket):
    """A listening unix socket whose ``accept`` only returns connections of this user.

    The peer's credentials (``SO_PEERCRED``) are checked before anything is read;
    another user's connection is closed at once, so a flood of idle ones neither fills
    the connection table nor delays the owner's requests.

    Example:
        >>> import socket
        >>> a = OwnUserListener(socket.AF_UNIX, socket.SOCK_STREAM)
        >>> a.close()
    """

    def accept(self) -> tuple[socket.socket, object]:
        """Accept the next connection from this user (closing any others first).

        Returns:
            ``(connection, address)`` as ``socket.accept``.

        Raises:
            BlockingIOError: No connection is waiting (non-blocking listener).

        Example:
            See the class docstring.
        """
        while True:
            conn, address = super().accept()
            _pid, uid = peer_credentials(conn)
            if uid is None or uid == os.getuid():
                return conn, address
            conn.close()


def _serve(keeper: Keeper, listener: socket.socket) -> None:
    loop = RequestLoop(listener, keeper.handle, max_request=MAX_REQUEST,
                       timeout=CONNECTION_TIMEOUT, tick=keeper.tick, tick_interval=0.25)
    keeper.stop = loop.stop
    loop.run()


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args[:-1] else None


def main(argv: list[str] | None = None) -> int:
    """Run a keeper: ``python -m portsafe._services.keeper [--fd N --status-fd M] [--idle S]``.

    With ``--fd``, serve that inherited listening socket (the client bound it) and
    write ``ok`` or the reason it cannot start to ``--status-fd``; without, bind this
    user's first keeper address and serve in the foreground.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code.

    Example:
        Started for you by ``portsafe reserve``; you never need to run it.
    """
    args = sys.argv[1:] if argv is None else argv
    fd, status, idle_text = (_option(args, n) for n in ("--fd", "--status-fd", "--idle"))
    status_fd = int(status) if status else None
    try:
        from portsafe._core import reserve as _reserve  # noqa: F401 - warm, before saying "ok"
        from portsafe._settings import keeper_idle

        idle = float(idle_text) if idle_text else keeper_idle(DEFAULT_IDLE)
        if fd is not None:
            listener: socket.socket = OwnUserListener(fileno=int(fd))
        else:
            plain = bind_unix(keeper_address(), mode=0o600)
            listener = OwnUserListener(fileno=plain.detach())
    except Exception as exc:  # noqa: BLE001 - reported to the starting client
        _report(status_fd, f"the lease keeper cannot start: {exc}")
        return 1
    _report(status_fd, "ok")
    with contextlib.closing(listener):
        _serve(Keeper(idle=idle), listener)
    return 0


def _report(status_fd: int | None, message: str) -> None:
    if status_fd is None:
        if message != "ok":
            print(message, file=sys.stderr)
        return
    with contextlib.suppress(OSError):
        os.write(status_fd, message.encode())
    with contextlib.suppress(OSError):
        os.close(status_fd)


if __name__ == "__main__":
    sys.exit(main())
