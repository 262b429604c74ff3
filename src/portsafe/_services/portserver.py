"""A port server speaking Google portpicker's protocol, and its client.

The protocol (python_portpicker's ``portserver.py``): a client connects to the unix
socket named by ``PORTSERVER_ADDRESS`` (a leading ``@`` means the Linux abstract
namespace), sends its pid in decimal and a newline, and reads a port in decimal and a
newline; a closed connection (or ``0``) means "none". There is no release message: a
grant is taken back when the process it was made for is gone.

portsafe adds one request, ``take <port>``: the grantee asks the server to hand over its
hold on a grant so that the grantee holds the port itself (see ``_core.grants``). How
depends on the lock table (``_locking.files.table().passes_descriptors``):

* names (Linux): the server answers ``fd`` with the descriptor that holds the port's name
  (``SCM_RIGHTS``), after taking it out of its table (``detach``). It closes its own copy
  only once the client has closed the connection, by which time the client holds the
  copy it received (``adopt``): at no moment does nobody hold the name, so no other
  process can take the port during a hand-over. A reply that is not delivered gives the
  descriptor back to the server's table (``adopt``): the server holds the grant again.
* lock files (elsewhere): the server drops its lock and answers ``ok``; the client then
  locks the port itself (a record lock cannot be passed to another process).

Servers that do not know ``take`` (portpicker's) close the connection, which means "no",
and so does any answer the client does not expect (an ``ok`` to a client of names, which
cannot lock a port that another process's name still holds; an ``fd`` without a
descriptor; an ``fd`` to a client of lock files, whose kernel closes what it was sent).

Layering: this module is a service, above the core. Its client is in the core
(``_core.serverclient``, used by ``_core.grants``), and both use only the base's
unix-socket plumbing (``_unixsock``) and process identity (``_system``);
``tests/test_layering.py`` keeps it so.

Theory of operation of :class:`PortServer`:

1. Every grant is a lock taken *through the core* (``_locking.files``) and held by the server
   until the grantee takes it over or the grant is reclaimed, so local portsafe users
   never get a port the server handed out, and the server never hands out a port some
   portsafe user holds. Ports in the grant book are never handed out twice, whoever
   holds their lock.
2. A grant is made only when its reply reaches the client: a connection that ends
   before the reply is written (the client gave up, the server is stopping) undoes it.
3. A grant belongs to one process, identified by pid *and* start time, and only to the
   sender or one of its ancestors of the sender's own user, unless the sender is root
   (``_system.resolve_owner``): pid 2 or the server's own pid, which never exit, get
   nothing, and nobody can make the server hold ports for another user's long-lived
   process. One owner holds at most ``max_per_owner``.
4. Grants are booked per owner. Once a second, and when no port is left, each owner is
   looked at once; an owner that has exited (or is a zombie) loses its grants. A
   request costs O(1) process look-ups, however many grants are held.
5. One request per connection, at most :data:`MAX_REQUEST` bytes, answered or dropped
   within a deadline; garbage costs one closed connection and nothing else.

A portsafe client never relies on the server's lock while it uses a port: it holds its
own (via ``take``), so a server killed with SIGKILL, and a new one started in its place,
leave every port in use covered. Clients that take no locks (portpicker's) are
covered only while the server that granted their port lives, as with portpicker's own
server.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import sys

from portsafe import _platform as backend
from portsafe import _settings
from portsafe._core import probe as _probe
from portsafe._core import ranges as _ranges
from portsafe._errors import PortsafeError
from portsafe._locking import files as _locks
from portsafe._services.requestloop import Reply, RequestLoop
from portsafe._system import command_line, process_identity, resolve_owner
from portsafe._unixsock import (
    bind_unix,
    owned_directory,
    unix_address,
)

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "DEFAULT_ADDRESS",
    "PortServer",
    "default_address",
    "serve",
]


DEFAULT_ADDRESS = "@unittest-portserver"
"""portpicker's default address, so existing ``PORTSERVER_ADDRESS`` settings just work
(Linux; see :func:`default_address`)."""


def default_address() -> str:
    """Where ``portsafe serve`` listens unless told: portpicker's ``@unittest-portserver``
    where there are abstract unix-socket names (Linux), else a socket file in a directory
    of this user's that others may read but not write, ``/tmp/portsafe-portserver-<uid>``.

    Raises:
        OSError: That directory cannot be made, or is not this user's own with mode 0755
            or stricter (the message says what to do).

    Example:
        >>> address = default_address()
        >>> address == DEFAULT_ADDRESS or address.endswith("/portserver.sock")
        True
    """
    if backend.ABSTRACT:
        return DEFAULT_ADDRESS
    where = owned_directory(f"/tmp/portsafe-portserver-{os.getuid()}", 0o755)  # noqa: S108
    return os.path.join(where, "portserver.sock")


MAX_REQUEST = 32
"""A pid is at most 20 digits; anything longer than this is not a request."""

REQUEST_TIMEOUT = 2.0
"""Seconds a client has to send its request once connected."""

MAX_PER_OWNER = 256
"""Grants one process may hold at once (a long-lived shell asking for ``$$`` in a loop
must not take the whole pool)."""


class PortServer:
    """The grant book of a port server: who has which port, and taking ports back.

    Args:
        ports: Candidate ports to serve (None: the core's default candidates, outside the
            ephemeral range).
        log: Called with one line per grant and reclaim, or None for silence.
        max_per_owner: Grants one process may hold at once.

    Raises:
        InvalidSettingError: *ports* is empty or has a number outside 1..65535.

    Example:
        >>> import os
        >>> server = PortServer(ports=range(20000, 20100))
        >>> reply = server.handle(b"%d\\n" % os.getpid(), os.getpid(), os.geteuid())
        >>> 20000 <= int(reply) < 20100
        True
        >>> server.close()
    """

    def __init__(self, *, ports: Sequence[int] | None = None,
                 log: Callable[[str], None] | None = None,
                 max_per_owner: int = MAX_PER_OWNER) -> None:
        self._candidates = None if ports is None else _ranges.explicit_candidates(ports)
        self._log = log
        self._max_per_owner = max_per_owner
        self._rng = random.Random()  # noqa: S311 - spreading picks, not secrecy
        self._owner_of: dict[int, tuple[int, int]] = {}  # port -> owner identity
        self._by_owner: dict[tuple[int, int], set[int]] = {}  # owner -> its ports
        self._locked: set[int] = set()  # granted ports whose lock this server holds
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
        return {port: ident[0] for port, ident in self._owner_of.items()}

    def owner(self, port: int) -> tuple[int, int] | None:
        """The identity ``(pid, start time)`` *port* is granted to, or None.

        Example:
            >>> PortServer().owner(20000) is None
            True
        """
        return self._owner_of.get(port)

    def reclaim(self) -> list[int]:
        """Take back every grant whose process is gone; return the ports reclaimed.

        Costs one process look-up per owner, not per grant.

        Returns:
            The ports taken back (their locks released to the core).

        Example:
            >>> PortServer().reclaim()
            []
        """
        gone = [ident for ident in self._by_owner if process_identity(ident[0]) != ident]
        reclaimed: list[int] = []
        for ident in gone:
            for port in sorted(self._by_owner[ident]):
                self._forget(port)
                reclaimed.append(port)
                if self._log:
                    self._log(f"reclaim port {port} from pid {ident[0]} (exited)")
        return reclaimed

    def _forget(self, port: int) -> None:
        ident = self._owner_of.pop(port)
        ports = self._by_owner[ident]
        ports.discard(port)
        if not ports:
            del self._by_owner[ident]
        if port in self._locked:
            self._locked.discard(port)
            _locks.table().release(port)

    def revoke(self, port: int, owner: tuple[int, int] | None = None) -> None:
        """Undo the grant of *port* (its reply never reached the client).

        Args:
            port: The port granted.
            owner: The identity it was granted to; if the port has changed hands since
                (reclaimed and granted again), nothing is undone.

        Example:
            >>> PortServer().revoke(20000)  # not granted: nothing to do
        """
        ident = self._owner_of.get(port)
        if ident is not None and owner in (None, ident):
            self._forget(port)
            self.granted -= 1
            if self._log:
                self._log(f"revoke port {port}: the reply was not delivered")

    def handle(self, request: bytes, peer_pid: int | None,
               peer_uid: int | None) -> bytes | Reply | None:
        """Answer one request: the reply to send, or None to close without one.

        Args:
            request: What the client sent: its pid in decimal (newline optional), or
                ``take <port>`` to take over a grant's hold.
            peer_pid: The sender's pid according to the OS, or None if unknown.
            peer_uid: The sender's uid according to the OS, or None if unknown: a grant
                for an ancestor of the sender needs it (and that ancestor to be of the
                same user, unless it is 0).

        Returns:
            ``b"<port>\\n"``; to ``take``, ``b"ok\\n"`` (lock files: the server let go) or
            a :class:`~portsafe._services.requestloop.Reply` of ``b"fd\\n"`` carrying the name's
            descriptor (names), whose callbacks the caller must honour; None when the
            request is refused or no port is free.

        Example:
            >>> PortServer().handle(b"not a pid\\n", None, None) is None
            True
        """
        text = request.strip()
        if text.startswith(b"take "):
            return self._hand_over(text[5:], peer_pid)
        if not text.isdigit() or len(text) > 20:
            return self._refuse(f"refuse request {request[:24]!r}: not a pid")
        owner = resolve_owner(int(text), peer_pid, peer_uid)
        ident = process_identity(owner) if owner is not None else None
        if ident is None:
            return self._refuse(f"refuse request for pid {int(text)} (sender pid "
                                f"{peer_pid}, uid {peer_uid}): not the sender, nor a live "
                                f"ancestor of it run by the same user")
        return self._grant(ident)

    def _grant(self, ident: tuple[int, int]) -> bytes | None:
        held = self._by_owner.get(ident, ())
        if len(held) >= self._max_per_owner:
            return self._refuse(f"refuse pid {ident[0]}: it holds {len(held)} grants "
                                f"already (at most {self._max_per_owner})")
        try:
            port = self._pick()
            if port is None and self.reclaim():
                port = self._pick()
        except PortsafeError as exc:
            return self._refuse(f"no port for pid {ident[0]}: {exc}")
        if port is None:
            return self._refuse(f"no port for pid {ident[0]}: all "
                                f"{self._candidate_set().count} candidates are taken")
        self._owner_of[port] = ident
        self._by_owner.setdefault(ident, set()).add(port)
        self._locked.add(port)
        self.granted += 1
        if self._log:
            self._log(f"grant port {port} to pid {ident[0]} ({command_line(ident[0])})")
        return b"%d\n" % port

    def _candidate_set(self) -> _ranges.CandidateSet:
        if self._candidates is None:
            self._candidates = _ranges.default_candidates()
        return self._candidates

    def _pick(self) -> int | None:
        """Lock and probe a port that is in nobody's book; None if none is left."""
        candidates = self._candidate_set()
        table, directory = _locks.table(), _settings.lock_dir()
        # Free for TCP and UDP on the wildcard address of IPv4 and IPv6 (where the host
        # has it), as portpicker's grants are: the client may bind any of them.
        probes = _probe.targets("", socket.AF_UNSPEC, 0)
        for port in candidates.order(self._rng, table.home(directory)):
            if port in self._owner_of or not table.try_acquire(port, directory):
                continue
            try:
                busy = _probe.is_free(port, probes)
            except BaseException:
                table.release(port)
                raise
            if not busy:
                return port
            table.release(port)
        return None

    def _hand_over(self, text: bytes, peer_pid: int | None) -> bytes | Reply | None:
        if not text.isdigit() or len(text) > 5:
            return self._refuse(f"refuse take {text[:8]!r}: not a port")
        port = int(text)
        ident = self._owner_of.get(port)
        if ident is None or peer_pid != ident[0] or process_identity(peer_pid) != ident:
            return self._refuse(f"refuse take {port} from pid {peer_pid}: not its grantee")
        table = _locks.table()
        if not table.passes_descriptors:  # lock files: let go; the grantee locks it
            if port in self._locked:
                self._locked.discard(port)
                table.release(port)
                if self._log:
                    self._log(f"hand over port {port} to pid {peer_pid}")
            return b"ok\n"
        fd = table.detach(port) if port in self._locked else None
        if fd is None:
            self._locked.discard(port)
            return self._refuse(f"refuse take {port} from pid {peer_pid}: this server "
                                f"no longer holds it (handed over already)")
        self._locked.discard(port)
        if self._log:
            self._log(f"hand over port {port} to pid {peer_pid}")
        return Reply(b"fd\n", fds=(fd,), on_lost=lambda: self._take_back(port, fd, ident),
                     on_done=lambda: os.close(fd))

    def _take_back(self, port: int, fd: int, ident: tuple[int, int]) -> None:
        """A hand-over's reply was not delivered: hold the port by *fd* again, or close
        it if the grant is gone meanwhile (reclaimed, the server stopping)."""
        if self._owner_of.get(port) != ident or port in self._locked:
            os.close(fd)
            return
        held = _locks.table().adopt(port, fd)  # closes fd if not
        if held:
            self._locked.add(port)
        if self._log:
            self._log(f"hand over of port {port} to pid {ident[0]} not delivered: "
                      + ("held by this server again" if held else "no longer held"))

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
        for port in list(self._owner_of):
            self._forget(port)


def serve(address: str | None = None, *, ports: Sequence[int] | None = None,
          verbose: bool = False, ready: Callable[[], None] | None = None) -> None:
    """Run a portpicker-protocol port server until SIGTERM or SIGINT.

    Args:
        address: Where to listen: ``@name`` (abstract namespace, Linux) or a path; None
            for :func:`default_address`. A path socket is made connectable by every user
            (mode 0666), as an abstract name is: who gets what is decided per request,
            from the sender's credentials.
        ports: The ports to hand out (None: the core's default candidates).
        verbose: Log each grant and reclaim to stderr, one line each.
        ready: Called once the server is listening.

    Raises:
        ServerAddressInUseError: Another server already listens on *address*.
        InvalidSettingError: *address* is abstract where there are no abstract names.

    Example:
        Run ``portsafe serve --address @my-portserver`` and set
        ``PORTSERVER_ADDRESS=@my-portserver`` for the test runners.
    """

    def log(line: str) -> None:
        print(f"portsafe serve: {line}", file=sys.stderr, flush=True)

    if address is None:
        address = default_address()
    server = PortServer(ports=ports, log=log if verbose else None)
    listener = bind_unix(address, backlog=1024, mode=0o666)
    target = unix_address(address)
    try:

        def handler(line: bytes, pid: int | None, uid: int | None) -> bytes | Reply | None:
            reply = server.handle(line, pid, uid)
            if reply is None or isinstance(reply, Reply) or not reply[:1].isdigit():
                return reply
            port = int(reply)
            owner = server.owner(port)
            return Reply(reply, on_lost=lambda: server.revoke(port, owner))

        loop = RequestLoop(listener, handler, max_request=MAX_REQUEST,
                           timeout=REQUEST_TIMEOUT, max_connections=512, tick=server.reclaim)
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
