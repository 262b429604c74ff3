"""A small selectors loop for the services: one request per connection, bounded.

Each connection gets a size cap and a deadline, so that garbage, huge or silent clients
cost one closed connection and nothing else.

A reply may carry descriptors (``SCM_RIGHTS``, :class:`Reply`'s *fds*): the port server
hands a held name over that way. Such a connection is ended only once the client has
closed its end (or at the deadline), so the client holds its received copy before the
server's ``on_done`` closes the server's own.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import time

from portsafe._unixsock import peer_credentials

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["Reply", "RequestLoop"]


class Reply:
    """A handler's answer that must be taken back if it never reaches the client.

    Args:
        data: The bytes to send.
        on_lost: Called once if the connection ends (error, deadline, eviction, server
            stop) before every byte was written: a grant the client never saw is undone.
        fds: Descriptors to pass with the first bytes (``SCM_RIGHTS``). The loop never
            closes them: *on_lost* or *on_done* (exactly one is called) decides.
        on_done: Called once when the connection ends after every byte (and the
            descriptors) were written. With *fds*, that is when the client has closed
            its end (it holds its copies by then) or at the connection's deadline.

    Example:
        >>> undone = []
        >>> reply = Reply(b"42", on_lost=lambda: undone.append(42))
        >>> reply.data, reply.fds
        (b'42', ())
    """

    __slots__ = ("data", "fds", "on_done", "on_lost")

    def __init__(self, data: bytes, *, on_lost: Callable[[], object] | None = None,
                 fds: tuple[int, ...] = (),
                 on_done: Callable[[], object] | None = None) -> None:
        self.data = data
        self.on_lost = on_lost
        self.fds = fds
        self.on_done = on_done


class _Conn:
    __slots__ = ("deadline", "fds", "inbuf", "lingering", "on_done", "on_lost", "outbuf",
                 "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inbuf = b""
        self.outbuf: bytes | None = None  # None while still reading the request
        self.on_lost: Callable[[], object] | None = None  # until outbuf is all written
        self.on_done: Callable[[], object] | None = None  # once it is
        self.fds: tuple[int, ...] = ()  # to send with the first bytes written
        self.lingering = False  # written, with descriptors: waiting for the client's EOF


class RequestLoop:
    """Serve a one-request-per-connection line protocol on a listening unix socket.

    Single-threaded (selectors). Each connection gets *timeout* seconds and
    *max_request* bytes to send one line; the handler's reply is written at once (the
    rest when the socket is writable) and the connection closed. Beyond
    *max_connections*, the oldest connection is dropped, so idle clients cannot starve
    the others. A :class:`Reply` whose connection ends before it is all written is
    reported to its ``on_lost``, so nothing is granted to a client that never got it;
    one that carries descriptors keeps its connection until the client closes it.

    Args:
        listener: A bound, listening socket (the loop does not close it).
        handler: ``handler(request_line, peer_pid, peer_uid)`` returning the reply
            (bytes or a :class:`Reply`), or None to close without one.
        max_request: Longest acceptable request, in bytes, newline included.
        timeout: Seconds per connection, from accept to the last byte written.
        max_connections: Connections served at once.
        tick: Called about every *tick_interval* seconds (housekeeping).
        tick_interval: Seconds between ticks.
        admit: ``admit(peer_pid, peer_uid) -> bool``, asked at accept, before the
            connection costs anything: a refused peer is closed at once, so it cannot
            fill the *max_connections* slots (e.g. another user's idle connections).

    Example:
        >>> import socket
        >>> a, b = socket.socketpair()
        >>> loop = RequestLoop(a, lambda req, pid, uid: req, max_request=10, timeout=1.0)
        >>> loop.stop(); loop.run(handle_signals=False)
        >>> a.close(); b.close()
    """

    def __init__(self, listener: socket.socket,
                 handler: Callable[[bytes, int | None, int | None], bytes | Reply | None], *,
                 max_request: int, timeout: float, max_connections: int = 128,
                 tick: Callable[[], object] | None = None, tick_interval: float = 1.0,
                 admit: Callable[[int | None, int | None], bool] | None = None) -> None:
        self._listener = listener
        self._handler = handler
        self._max_request = max_request
        self._timeout = timeout
        self._max_connections = max_connections
        self._tick = tick
        self._tick_interval = tick_interval
        self._admit = admit
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._conns: dict[int, _Conn] = {}

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from signal handlers and other threads).

        Example:
            >>> import socket
            >>> a, b = socket.socketpair()
            >>> loop = RequestLoop(a, lambda r, p, u: None, max_request=1, timeout=1)
            >>> loop.stop(); loop.run(handle_signals=False)  # returns at once
            >>> a.close(); b.close()
        """
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def run(self, *, handle_signals: bool = True,
            stop_signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Serve until :meth:`stop` is called or a stop signal arrives.

        Args:
            handle_signals: Install handlers for *stop_signals* (main thread only).
            stop_signals: Signals that end the loop cleanly.

        Example:
            See the class docstring.
        """
        old: dict[int, object] = {}
        if handle_signals:
            for signum in stop_signals:
                old[signum] = signal.signal(signum, lambda _s, _f: self.stop())
        sel = selectors.DefaultSelector()
        self._listener.setblocking(False)
        sel.register(self._listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        next_tick = time.monotonic() + self._tick_interval
        try:
            while not self._stopping:
                now = time.monotonic()
                wait = next_tick - now
                for conn in self._conns.values():
                    wait = min(wait, conn.deadline - now)
                for key, mask in sel.select(max(wait, 0.0)):
                    if key.data == "listen":
                        self._accept(sel)
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                    else:
                        self._service(sel, key.fd, mask)
                now = time.monotonic()
                for fd, conn in list(self._conns.items()):
                    if conn.deadline <= now:
                        self._expire(sel, fd, conn)
                if now >= next_tick:
                    next_tick = now + self._tick_interval
                    if self._tick is not None:
                        self._tick()
        finally:
            for fd in list(self._conns):
                self._drop(sel, fd)
            sel.close()
            for signum, handler in old.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(64):  # drain the backlog a bit at a time
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE: leave it in the backlog for now
                return
            if self._admit is not None and not self._admit(*peer_credentials(sock)):
                sock.close()
                continue
            if len(self._conns) >= self._max_connections:
                self._drop(sel, min(self._conns, key=lambda fd: self._conns[fd].deadline))
            sock.setblocking(False)
            self._conns[sock.fileno()] = _Conn(sock, time.monotonic() + self._timeout)
            sel.register(sock, selectors.EVENT_READ, "conn")

    def _service(self, sel: selectors.BaseSelector, fd: int, mask: int) -> None:
        conn = self._conns.get(fd)
        if conn is None:
            return
        sock = conn.sock
        try:
            if conn.lingering:
                if mask & selectors.EVENT_READ:
                    try:
                        sock.recv(64)  # EOF (or anything): the client has what it was sent
                    except (BlockingIOError, InterruptedError):
                        return
                    self._drop(sel, fd)
            elif conn.outbuf is None and mask & selectors.EVENT_READ:
                chunk = sock.recv(4096)
                conn.inbuf += chunk
                if b"\n" in conn.inbuf or not chunk:
                    line = conn.inbuf.split(b"\n", 1)[0]
                    if len(line) >= self._max_request or not line:
                        self._drop(sel, fd)
                        return
                    pid, uid = peer_credentials(sock)
                    reply = self._handler(line, pid, uid)
                    if isinstance(reply, Reply):
                        conn.on_lost, conn.on_done = reply.on_lost, reply.on_done
                        conn.fds = reply.fds
                        reply = reply.data
                    if not reply:
                        self._drop(sel, fd)
                        return
                    conn.outbuf = reply
                    self._write(sel, fd, conn)  # most replies fit: no extra select round
                    if self._conns.get(fd) is conn and not conn.lingering:
                        sel.modify(sock, selectors.EVENT_WRITE, "conn")
                elif len(conn.inbuf) >= self._max_request:
                    self._drop(sel, fd)
            elif conn.outbuf is not None and mask & selectors.EVENT_WRITE:
                self._write(sel, fd, conn)
        except OSError:
            self._drop(sel, fd)

    def _expire(self, sel: selectors.BaseSelector, fd: int, conn: _Conn) -> None:
        """End a connection past its deadline, but serve a request that is waiting.

        The deadline bounds what a silent client costs; it must not punish a client for
        the server's own lag. When the server was slow (a long handler, or starved of
        CPU on a loaded machine), a request may have arrived after this round's select:
        closing with it unread would reset the client (ECONNRESET) although it was on
        time, so it is read and answered first.
        """
        if conn.outbuf is None:
            self._service(sel, fd, selectors.EVENT_READ)  # a silent one ends here (EAGAIN)
        if self._conns.get(fd) is conn:
            self._drop(sel, fd)

    def _write(self, sel: selectors.BaseSelector, fd: int, conn: _Conn) -> None:
        assert conn.outbuf is not None
        try:
            if conn.fds:  # with the first bytes: they arrive in one recvmsg with them
                sent = socket.send_fds(conn.sock, [conn.outbuf], list(conn.fds))
                conn.fds = ()
            else:
                sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        conn.outbuf = conn.outbuf[sent:]
        if conn.outbuf:
            return
        conn.on_lost = None  # delivered: in the client's socket buffer
        if conn.on_done is not None and conn.deadline > time.monotonic():
            # Descriptors went with it: end when the client has closed its end, so it
            # holds its copies before on_done (the sender) closes its own.
            conn.lingering = True
            sel.modify(conn.sock, selectors.EVENT_READ, "conn")
            return
        self._drop(sel, fd)

    def _drop(self, sel: selectors.BaseSelector, fd: int) -> None:
        conn = self._conns.pop(fd, None)
        if conn is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn.sock)
        conn.sock.close()
        if conn.on_lost is not None:  # exactly one of on_lost and on_done
            lost, conn.on_lost, conn.on_done = conn.on_lost, None, None
            lost()
        elif conn.on_done is not None:
            done, conn.on_done = conn.on_done, None
            done()
