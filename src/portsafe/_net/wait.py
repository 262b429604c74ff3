"""Wait until a server accepts connections on a port, and say what went wrong if not.

A server given a port *number* (``--port N``) binds it some time after it starts;
:func:`wait_for_port` returns as soon as it does. It polls with a back-off (5 ms growing
to 100 ms), so it is quick when the server is and never spins a CPU. Two things make it
fail fast and informatively: a ``process`` that exits first (its exit code is in the
error), and a timeout whose message counts what each attempt saw (refused, timed out,
unreachable), which usually tells the wrong host, the wrong port and the slow server
apart. ``passive=True`` reads the OS's table of listening sockets instead of
connecting, for servers that mind a probe connection (single-client or TLS servers
that log a failed handshake).

A server started with :func:`portsafe.spawn` on a socket from :func:`portsafe.listen`
needs no waiting: the socket listens before the server starts, and connections wait
in its backlog until the server accepts them.
"""

from __future__ import annotations

import collections
import errno
import os
import signal
import socket
import time

from portsafe._errors import InvalidSettingError, PortNotReadyError
from portsafe._net.checks import check_timeout, resolve
from portsafe._net.who import _listening
from portsafe._settings import shown

TYPE_CHECKING = False  # see portsafe/__init__.py

if TYPE_CHECKING:
    from typing import Any, Protocol

    from portsafe._core.reservation import Reservation

    class _Pollable(Protocol):
        @property
        def pid(self) -> int: ...
        def poll(self) -> int | None: ...


__all__ = ["wait_for_port"]

_FIRST_DELAY = 0.005
_MAX_DELAY = 0.1
_MAX_CONNECT_TIMEOUT = 1.0
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH}


def _target(port: object, host: str | None) -> tuple[int, str]:
    __tracebackhide__ = True
    if isinstance(port, bool):
        raise TypeError(f"port must be an int or a portsafe.Reservation, not {shown(port)}")
    reserved_host = None if isinstance(port, int) else getattr(port, "host", None)
    number = port if isinstance(port, int) else getattr(port, "port", None)
    if not isinstance(number, int):
        raise TypeError(f"port must be an int or a portsafe.Reservation, not {shown(port)}")
    if not 1 <= number <= 65535:
        raise InvalidSettingError(f"port must be in 1..65535, not {shown(number)}")
    if host is None:
        host = reserved_host if isinstance(reserved_host, str) and reserved_host else None
    if host is None:
        host = "127.0.0.1"
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {shown(host)}")
    return number, host


def _attempt(family: int, address: tuple[Any, ...], timeout: float) -> str | None:
    """Connect once; return ``None`` on success, else a short word for what happened."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:  # socket.timeout is TimeoutError from Python 3.10 on
        return "no answer (connect timed out)"
    except OSError as exc:
        if exc.errno in _UNREACHABLE:
            return "unreachable"
        return exc.strerror or type(exc).__name__
    finally:
        sock.close()
    return None


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


def wait_for_port(
    port: int | Reservation,
    host: str | None = None,
    *,
    timeout: float = 10.0,
    process: _Pollable | None = None,
    passive: bool = False,
) -> None:
    """Return as soon as something accepts TCP connections on ``host``:``port``.

    Args:
        port: The port number, or a :class:`portsafe.Reservation` (whose host is then
            the default ``host``).
        host: The address to try; default ``"127.0.0.1"``. A name is resolved once.
        timeout: Seconds to wait in all (0 = check once).
        process: A ``subprocess.Popen`` (anything with ``poll()`` and ``pid``): give up
            at once if it exits before the port is ready.
        passive: Check the OS's table of listening sockets instead of connecting
            (Linux only): the server sees no probe connection. A listener on the
            wildcard address (``0.0.0.0``, ``::``) counts for every host.

    Returns:
        None, as soon as the port is ready.

    Raises:
        portsafe.PortNotReadyError: the timeout passed or ``process`` exited first; the
            message says how long it waited and what it saw (also as attributes).
        portsafe.InvalidSettingError: a port out of range, a timeout that is negative,
            infinite or nan, a malformed ``host`` (too long, a NUL in it), or
            ``passive=True`` on an OS without ``/proc/net/tcp``.
        portsafe.AddressNotAvailableError: ``host`` could not be resolved (an
            ``OSError``).
        TypeError: ``port`` is neither an int nor a reservation, ``host`` not a str,
            ``timeout`` not a number, or ``process`` has no ``poll()`` and ``pid``.

    Example:
        >>> import portsafe
        >>> with portsafe.listen() as sock:
        ...     portsafe.wait_for_port(sock.getsockname()[1], timeout=5)
    """
    __tracebackhide__ = True
    number, host = _target(port, host)
    timeout = check_timeout(timeout)
    if process is not None and not (callable(getattr(process, "poll", None))
                                    and isinstance(getattr(process, "pid", None), int)):
        raise TypeError(f"process must be a subprocess.Popen (poll() and pid), "
                        f"not {shown(process)}")
    if passive and not os.path.exists("/proc/net/tcp"):
        raise InvalidSettingError(
            "passive=True reads /proc/net/tcp, which this OS does not have; "
            "use passive=False (a probe connection) here"
        )
    infos = resolve(host, number, 0)
    hosts = {str(info[4][0]) for info in infos}
    start = time.monotonic()
    deadline = start + timeout
    delay = _FIRST_DELAY
    seen: collections.Counter[str] = collections.Counter()
    while True:
        if process is not None:
            returncode = process.poll()
            if returncode is not None:
                waited = time.monotonic() - start
                raise PortNotReadyError(
                    f"process {process.pid} {_describe_exit(returncode)} before {host}:"
                    f"{number} accepted connections (after {waited:.1f} s); see its output",
                    host=host, port=number, waited=waited, seen=seen, returncode=returncode,
                )
        if passive:
            if any(_listening(number, h) for h in hosts):
                return
            seen["not in the listening table"] += 1
        else:
            remaining = max(deadline - time.monotonic(), 0.001)
            for family, _, _, _, address in infos:
                outcome = _attempt(family, address, min(remaining, _MAX_CONNECT_TIMEOUT))
                if outcome is None:
                    return
                seen[outcome] += 1
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 1.5, _MAX_DELAY)
    waited = time.monotonic() - start
    summary = ", ".join(f"{what} x{count}" for what, count in seen.most_common())
    hint = (
        "is the server listening on that host and port (not another address or "
        "family)? Is it still starting? Check its output"
    )
    raise PortNotReadyError(
        f"nothing accepted connections on {host}:{number} within {timeout:g} s (waited "
        f"{waited:.1f} s; saw: {summary}); {hint}",
        host=host, port=number, waited=waited, seen=seen,
    )
