"""Auto mode's fast path: re-lock a port portsafe already chose, let the caller's bind check it.

A reservation through :func:`portsafe.reserve_port` costs a lock and a probe (a socket
of its own, bound and closed). For a ``bind(0)`` without ``SO_REUSEADDR`` or
``SO_REUSEPORT`` the probe is redundant: the caller's own bind, without a reuse option,
is the strictest check there is, and it is atomic. So auto mode remembers every port
``reserve_port`` handed it (each one passed the candidate rules: outside the ephemeral
range, not reserved, not a service port, ``PORTSAFE_RANGE``/``PORTSAFE_EXCLUDE``) and, for
such a bind, takes the lock on a random remembered port that nobody holds and binds
the caller's socket to it directly. The rules:

1. **Same guarantees.** The lock is taken first (G1); the candidate passed
   ``reserve_port``'s rules (G2); the caller's bind without a reuse option fails on any
   port in use, TIME_WAIT included (G3), and then the lock is dropped and the next
   candidate tried, and in the end ``reserve_port`` itself.
2. **Fresh ports keep coming.** One pick in :data:`FRESH_EVERY` goes through
   ``reserve_port`` anyway, so the remembered set keeps growing and spreading, and a
   picker that refuses repeats (anyio's factories) always meets a new number soon.
3. **Settings are honoured.** The remembered set belongs to one lock directory,
   ``PORTSAFE_RANGE`` and ``PORTSAFE_EXCLUDE``; when any of them changes it starts empty.
   With ``PORTSERVER_ADDRESS`` set the fast path is off (the server grants ports).
"""

from __future__ import annotations

import errno
import os
import random

from portsafe import _locks, _settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

__all__ = ["FRESH_EVERY", "Held", "remember", "take"]

#: One pick in this many goes through reserve_port even when the fast path could serve.
FRESH_EVERY = 8
_MIN_KNOWN = 16  # below this, fast picks would repeat numbers too often
_MAX_KNOWN = 4096
_TRIES = 3

_rng = random.Random()  # noqa: S311 - spreading picks, not secrecy
_known: list[int] = []
_known_set: set[int] = set()
_NAMES = (_settings.LOCK_DIR, _settings.RANGE, _settings.EXCLUDE, _settings.PORTSERVER)
_key: list[object] = [None, ""]  # the raw settings the known ports belong to, lock dir
_picks = [0]


def _reset_in_child() -> None:
    _rng.seed()
    _known.clear()
    _known_set.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


class Held:
    """A port locked by the fast path; ``release()`` unlocks it (idempotent).

    Example:
        >>> held = Held(1); held.release(); held.release()
    """

    __slots__ = ("_pid", "port")

    def __init__(self, port: int) -> None:
        self.port = port
        self._pid = os.getpid()

    def release(self) -> None:
        """Unlock the port; a no-op in a fork child, which never held it."""
        if self._pid == os.getpid():
            self._pid = 0
            _locks.table().release(self.port)


def remember(port: int) -> None:
    """Note a port that ``reserve_port`` chose, as a candidate for later fast picks.

    Example:
        >>> import portsafe
        >>> with portsafe.reserve_port() as r:
        ...     remember(r.port)
    """
    raw = _settings.fingerprint(_NAMES)
    if raw != _key[0]:
        _key[:] = [raw, _settings.lock_dir()]
        _known.clear()
        _known_set.clear()
    if port not in _known_set and len(_known) < _MAX_KNOWN:
        _known.append(port)
        _known_set.add(port)


def take(bind: Callable[[socket.socket, tuple[object, ...]], None], sock: socket.socket,
         host: str, rest: tuple[object, ...]) -> Held | None:
    """Lock a remembered port and bind *sock* to it with *bind* (the C ``bind``); None
    means: use the slow path. *sock* must have no reuse option set.

    Example:
        >>> import _socket, socket
        >>> with socket.socket() as sock:
        ...     held = take(_socket.socket.bind, sock, "127.0.0.1", ())
        ...     held is None or sock.getsockname()[1] == held.port
        True
    """
    _picks[0] += 1
    count = len(_known)
    if count < _MIN_KNOWN or _picks[0] % FRESH_EVERY == 0:
        return None
    raw = _settings.fingerprint(_NAMES)
    if raw != _key[0] or raw[3]:  # other settings, or a port server to ask
        return None
    table = _locks.table()
    directory = str(_key[1])
    random_ = _rng.random
    for _ in range(_TRIES):
        port = _known[int(random_() * count)]
        if not table.try_acquire(port, directory):
            continue
        try:
            bind(sock, (host, port, *rest))
        except OSError as exc:
            table.release(port)
            if exc.errno == errno.EADDRINUSE:
                continue
            return None
        except BaseException:
            table.release(port)
            raise
        return Held(port)
    return None
