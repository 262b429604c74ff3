"""Auto mode's fast path: hand a later bind the reservation of a lease that ended.

A reservation through :func:`portsafe.reserve_port` costs a lock, a probe (a socket of
its own, bound and closed) and, in the end, an unlock. A busy suite's picks each end
up as a lease, and its leases end in turn (pushed out by the cap, or expired): so
instead of unlocking the port of a lease that ended, auto mode keeps its reservation in
a small pool, and a later ``bind(0)`` whose check can be its own bind takes a pooled
reservation and binds the caller's socket to it directly: no lock, no probe, no unlock.
A bind without a reuse option is the strictest check there is, and it is atomic. The
rules:

1. **Same guarantees.** A pooled reservation came from ``reserve_port`` (G2: outside the
   ephemeral range, not reserved, not a service port, ``PORTSAFE_RANGE`` and
   ``PORTSAFE_EXCLUDE``), and its lock was never dropped (G1). The caller's bind without
   a reuse option fails on a port that anything uses, TIME_WAIT included (G3): then the
   reservation is released for good and another one tried, and in the end
   ``reserve_port`` itself.
2. **Fresh ports keep coming.** One pick in :data:`FRESH_EVERY` goes through
   ``reserve_port`` anyway, so picks keep spreading over the range, and a picker that
   refuses repeats (anyio's factories) meets a new number within a few tries.
3. **Bounded.** The pool keeps at most :data:`MAX_POOL` reservations; past that the
   oldest is released. Together with the lease cap, a process never holds more than
   ``PORTSAFE_AUTO_MAX_LEASES + MAX_POOL`` ports besides its open sockets.
4. **Settings are honoured.** The pool belongs to one lock directory, ``PORTSAFE_RANGE``
   and ``PORTSAFE_EXCLUDE``: when any of them changes, it is released. With
   ``PORTSERVER_ADDRESS`` set the fast path is off (the server grants ports).
5. **fork.** A child's pool is empty: record locks are not inherited.
"""

from __future__ import annotations

import errno
import os
import random

from portsafe import _settings

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from portsafe._core.reservation import Reservation

__all__ = ["FRESH_EVERY", "MAX_POOL", "recycle", "release_all", "take"]

#: One pick in this many goes through reserve_port even when the pool could serve it.
FRESH_EVERY = 16
#: Reservations the pool keeps at most.
MAX_POOL = 64
_TRIES = 3

_rng = random.Random()  # noqa: S311 - spreading picks, not secrecy
_pool: list[Reservation] = []  # oldest first
_NAMES = (_settings.LOCK_DIR, _settings.RANGE, _settings.EXCLUDE, _settings.PORTSERVER)
_key: list[object] = [None]  # the raw settings the pooled reservations belong to
_picks = [0]


def _reset_in_child() -> None:
    _rng.seed()
    _pool.clear()  # the parent's locks: this process never held them


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


def release_all() -> None:
    """Release every pooled reservation.

    Example:
        >>> release_all(); _pool
        []
    """
    while _pool:
        _pool.pop().release()


def recycle(reservation: Reservation) -> None:
    """Pool the reservation of a lease that ended, for a later fast pick.

    Example:
        >>> import portsafe
        >>> recycle(portsafe.reserve_port()); len(_pool) >= 1
        True
        >>> release_all()
    """
    raw = _settings.fingerprint(_NAMES)
    if raw != _key[0]:
        release_all()
        _key[0] = raw
    _pool.append(reservation)
    if len(_pool) > MAX_POOL:
        _pool.pop(0).release()


def take(bind: Callable[[socket.socket, tuple[object, ...]], None], sock: socket.socket,
         host: str, rest: tuple[object, ...]) -> Reservation | None:
    """Bind *sock* (no reuse option set) to a pooled reservation's port with *bind* (the
    C ``bind``) and return that reservation; None means: use ``reserve_port``.

    Example:
        >>> import _socket, socket
        >>> with socket.socket() as sock:
        ...     taken = take(_socket.socket.bind, sock, "127.0.0.1", ())
        ...     taken is None or sock.getsockname()[1] == taken.port
        True
    """
    _picks[0] += 1
    if not _pool or _picks[0] % FRESH_EVERY == 0:
        return None
    raw = _settings.fingerprint(_NAMES)
    if raw != _key[0] or raw[3]:  # other settings, or a port server to ask
        return None
    for _ in range(_TRIES):
        if not _pool:
            return None
        reservation = _pool.pop(int(_rng.random() * len(_pool)))
        try:
            bind(sock, (host, reservation.port, *rest))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:  # a server got it, or a program without
                reservation.release()           # portsafe: not this pool's any more
                continue
            _pool.append(reservation)
            return None
        except BaseException:
            _pool.append(reservation)
            raise
        return reservation
    return None
