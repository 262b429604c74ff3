"""A port server speaking Google portpicker's protocol, and its client.

The protocol (python_portpicker's ``portserver.py``): a client connects to the unix
socket named by ``PORTSERVER_ADDRESS`` (a leading ``@`` means the Linux abstract
namespace), sends its pid in decimal and a newline, and reads a port in decimal and a
newline; a closed connection (or ``0``) means "none". There is no release message: a
grant is taken back when the process it was made for is gone.

Theory of operation of :class:`PortServer`:

1. Every grant is a reservation made *through the core* and held by the server until it
   reclaims the grant, so local portsafe users never get a port the server handed out,
   and the server never hands out a port some portsafe user holds.
2. A grant belongs to one process, identified by pid *and* start time (``/proc/<pid>/stat``
   field 22 on Linux), so a recycled pid does not keep a dead owner's ports.
3. A grant is reclaimed when its owner has exited (or is a zombie); the check runs before
   every grant and once a second.
4. Where the OS says who is on the other end (``SO_PEERCRED``), the claimed pid is checked
   against it: see :func:`resolve_owner`.
5. One request per connection, at most :data:`MAX_REQUEST` bytes, answered or dropped
   within a deadline; garbage costs one closed connection and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time

from portsafe._errors import InvalidSettingError, NoFreePortError
from portsafe._unixserver import (
    RequestLoop,
    ServerAddressInUseError,
    bind_unix,
    peer_credentials,
    unix_address,
)

TYPE_CHECKING = False  # typing is not imported at run time: keep imports cheap
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from portsafe._reserve import Reservation

__all__ = [
    "DEFAULT_ADDRESS",
    "PortServer",
    "ServerAddressInUseError",
    "peer_credentials",
    "request_port",
    "resolve_owner",
    "serve",
]

DEFAULT_ADDRESS = "@unittest-portserver"
"""portpicker's default address, so existing ``PORTSERVER_ADDRESS`` settings just work."""

MAX_REQUEST = 32
"""A pid is at most 20 digits; anything longer than this is not a request."""

REQUEST_TIMEOUT = 2.0
"""Seconds a client has to send its request once connected."""


def request_port(address: str, *, timeout: float = 2.0) -> int | None:
    """Ask the port server at *address* for a port, speaking portpicker's protocol.

    See :func:`request_grant`, which also says which process answered.

    Example:
        >>> request_port("@no-such-portserver-here", timeout=0.5) is None
        True
    """
    grant = request_grant(address, timeout=timeout)
    return None if grant is None else grant[0]


def request_grant(address: str, *, timeout: float = 2.0) -> tuple[int, int | None] | None:
    """Ask the port server at *address* for a port; return ``(port, server pid)``.

    The request is made on behalf of this process (``os.getpid()``); the server holds the
    port for it until it exits. Use the port at once: the protocol has no release, so a
    caller that no longer needs it should keep it in a pool for reuse.

    Note that a portsafe server holds each grant through the reservation core itself, so
    the caller cannot take portsafe's lock on the port as well (the server's pid holds
    it); the grant *is* the reservation.

    Args:
        address: The server's unix socket: a path, or ``@name`` for the abstract
            namespace (the format of ``PORTSERVER_ADDRESS``).
        timeout: Seconds to wait for the whole exchange.

    Returns:
        The port (1..65535) and the pid of the server process (from ``SO_PEERCRED``;
        None where the OS does not say), or None if no server answers or it has none
        to give.

    Raises:
        TypeError: *address* is not a str or *timeout* not a number.
        InvalidSettingError: *address* is empty or *timeout* is not positive.

    Example:
        >>> request_grant("@no-such-portserver-here", timeout=0.5) is None
        True
    """
    target = unix_address(address)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
    if not timeout > 0:
        raise InvalidSettingError(f"timeout must be positive, not {timeout!r}")
    if not hasattr(socket, "AF_UNIX"):
        return None
    deadline = time.monotonic() + timeout
    data = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(target)
            server_pid = peer_credentials(sock)[0]
            sock.sendall(b"%d\n" % os.getpid())
            while b"\n" not in data and len(data) < 64:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(64)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    try:
        port = int(data.split(b"\n", 1)[0])
    except ValueError:
        return None
    return (port, server_pid) if 1 <= port <= 65535 else None


# --- whose request is it: pids, namespaces, process identity ----------------------------


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, starttime)`` from ``/proc/<pid>/stat``, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rfind(")") + 2:].split()
    try:
        return fields[0], int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _nspids(pid: int) -> list[int]:
    """The pid of *pid* in each nested pid namespace, outermost first (Linux)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


def process_identity(pid: int) -> tuple[int, int] | None:
    """Return ``(pid, start time)`` of a live process, or None if it is gone.

    The start time (clock ticks since boot on Linux, 0 where the OS does not tell) tells
    a process from a later one that got the same pid. A zombie counts as gone.

    Args:
        pid: A process id in this process's pid namespace.

    Returns:
        The identity, or None.

    Example:
        >>> import os
        >>> process_identity(os.getpid()) is not None
        True
    """
    if pid <= 0:
        return None
    if os.path.isdir("/proc/self"):
        info = _proc_stat(pid)
        if info is None or info[0] in ("Z", "X"):
            return None
        return pid, info[2]
    try:
        os.kill(pid, 0)
    except PermissionError:
        return pid, 0
    except OSError:
        return None
    return pid, 0


def resolve_owner(claimed: int, peer_pid: int | None) -> int | None:
    """Decide which process a request is for, from the claimed pid and the real sender.

    * no peer credentials: trust the claim, as portpicker does (it must be a live pid
      other than 1);
    * claim equals the sender: the sender;
    * the sender is in a nested pid namespace (a container; its own pid, or a parent's,
      means nothing here): the sender's ancestor that has the claimed pid in the sender's
      namespace (pid 1 there is the container's init), else the sender itself;
    * same namespace: a live claimed pid other than 1 (a script asking for its shell,
      ``python -m portpicker $$``); pid 1 means the asker was orphaned, so nothing.

    Args:
        claimed: The pid the client sent.
        peer_pid: The pid the OS says sent it, or None if unknown.

    Returns:
        The pid to hold the grant for, or None to refuse.

    Example:
        >>> import os
        >>> resolve_owner(os.getpid(), os.getpid()) == os.getpid()
        True
        >>> resolve_owner(-5, None) is None
        True
    """
    if claimed <= 0:
        return None
    if peer_pid is None:
        return claimed if claimed != 1 and process_identity(claimed) else None
    if peer_pid == claimed:
        return claimed
    depth = len(_nspids(os.getpid()))
    peer_ns = _nspids(peer_pid)
    if depth and len(peer_ns) > depth:
        return _owner_in_nested_namespace(claimed, peer_pid, len(peer_ns))
    if claimed == 1:
        return None
    return claimed if process_identity(claimed) else None


def _owner_in_nested_namespace(claimed: int, peer_pid: int, depth: int) -> int:
    """The sender's ancestor whose pid in the sender's namespace is *claimed*, else the
    sender."""
    pid = peer_pid
    for _ in range(64):  # bounded: pid namespaces nest at most 32 deep
        ns = _nspids(pid)
        if len(ns) != depth:
            break
        if ns[-1] == claimed:
            return pid
        stat_ = _proc_stat(pid)
        if stat_ is None or stat_[1] <= 1:
            break
        pid = stat_[1]
    return peer_pid


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return "?"
    return " ".join(p.decode("utf-8", "replace") for p in raw.split(b"\0") if p) or "?"


# --- the server ------------------------------------------------------------------------


class PortServer:
    """The grant book of a port server: who has which port, and taking ports back.

    Args:
        ports: Candidate ports to serve (None: the core's default candidates, outside the
            ephemeral range).
        log: Called with one line per grant and reclaim, or None for silence.

    Example:
        >>> import os
        >>> server = PortServer(ports=range(20000, 20100))
        >>> reply = server.handle(b"%d\\n" % os.getpid(), os.getpid())
        >>> 20000 <= int(reply) < 20100
        True
        >>> server.close()
    """

    def __init__(self, *, ports: Sequence[int] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self._ports = ports
        self._log = log
        self._grants: dict[int, tuple[tuple[int, int], Reservation]] = {}
        self.granted = 0
        self.refused = 0

    def grants(self) -> dict[int, int]:
        """Return ``{port: pid}`` for every grant held now.

        Returns:
            The current grants.

        Example:
            >>> PortServer().grants()
            {}
        """
        return {port: ident[0] for port, (ident, _r) in self._grants.items()}

    def reclaim(self) -> list[int]:
        """Take back every grant whose process is gone; return the ports reclaimed.

        Returns:
            The ports released back to the core.

        Example:
            >>> PortServer().reclaim()
            []
        """
        gone = [port for port, (ident, _r) in self._grants.items()
                if process_identity(ident[0]) != ident]
        for port in gone:
            ident, reservation = self._grants.pop(port)
            reservation.release()
            if self._log:
                self._log(f"reclaim port {port} from pid {ident[0]} (exited)")
        return gone

    def handle(self, request: bytes, peer_pid: int | None) -> bytes | None:
        """Answer one request: the reply to send, or None to close without one.

        Args:
            request: What the client sent (its pid in decimal, newline optional).
            peer_pid: The sender's pid according to the OS, or None if unknown.

        Returns:
            ``b"<port>\\n"``, or None when the request is refused or no port is free.

        Example:
            >>> PortServer().handle(b"not a pid\\n", None) is None
            True
        """
        text = request.strip()
        if not text.isdigit() or len(text) > 20:
            return self._refuse(f"refuse request {request[:24]!r}: not a pid")
        owner = resolve_owner(int(text), peer_pid)
        ident = process_identity(owner) if owner is not None else None
        if ident is None:
            return self._refuse(f"refuse request for pid {int(text)} (sender pid "
                                f"{peer_pid}): no such live process")
        owner = ident[0]
        self.reclaim()
        # Imported here: _reserve imports this module for its client side.
        from portsafe._reserve import reserve_port

        try:
            # Free for TCP and UDP on the wildcard address of IPv4 and IPv6 (where the
            # host has it), as portpicker's grants are: the client may bind any of them.
            reservation = reserve_port(host="", family=socket.AF_UNSPEC,
                                       socktype=0, ports=self._ports)
        except NoFreePortError as exc:
            return self._refuse(f"no port for pid {owner}: {exc.strerror}")
        self._grants[reservation.port] = (ident, reservation)
        self.granted += 1
        if self._log:
            self._log(f"grant port {reservation.port} to pid {owner} "
                      f"({_command_line(owner)})")
        return b"%d\n" % reservation.port

    def _refuse(self, message: str) -> bytes | None:
        self.refused += 1
        if self._log:
            self._log(message)
        return None

    def close(self) -> None:
        """Release every grant (the server is stopping).

        Example:
            >>> PortServer().close()
        """
        for _ident, reservation in self._grants.values():
            reservation.release()
        self._grants.clear()


def serve(address: str = DEFAULT_ADDRESS, *, ports: Sequence[int] | None = None,
          verbose: bool = False, ready: Callable[[], None] | None = None) -> None:
    """Run a portpicker-protocol port server until SIGTERM or SIGINT.

    Args:
        address: Where to listen: ``@name`` (abstract namespace) or a path.
        ports: The ports to hand out (None: the core's default candidates).
        verbose: Log each grant and reclaim to stderr, one line each.
        ready: Called once the server is listening.

    Raises:
        ServerAddressInUseError: Another server already listens on *address*.

    Example:
        Run ``portsafe serve --address @my-portserver`` and set
        ``PORTSERVER_ADDRESS=@my-portserver`` for the test runners.
    """

    def log(line: str) -> None:
        print(f"portsafe serve: {line}", file=sys.stderr, flush=True)

    server = PortServer(ports=ports, log=log if verbose else None)
    listener = bind_unix(address)
    target = unix_address(address)
    try:

        def handler(line: bytes, pid: int | None, _uid: int | None) -> bytes | None:
            return server.handle(line, pid)

        loop = RequestLoop(listener, handler, max_request=MAX_REQUEST,
                           timeout=REQUEST_TIMEOUT, tick=server.reclaim)
        if verbose:
            log(f"serving on {address}")
        if ready is not None:
            ready()
        loop.run()
    finally:
        listener.close()
        server.close()
        if not target.startswith("\0"):
            with contextlib.suppress(OSError):
                os.unlink(target)
        if verbose:
            log(f"stopped; {server.granted} granted, {server.refused} refused")
