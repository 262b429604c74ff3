"""One candidate's claim in one call: lock its byte, then bind-check it (G1 and G3).

A reservation's system calls are few (lock, socket, bind, close; unlock at release) and
cheap; in Python each costs a call, an object and its error handling as well, which is
most of a reservation's time. So the sequence is one function: :func:`claim_py` here,
with the lock a record lock on a lock file (macOS, the BSDs, Windows: ``_locking.files``)
or none at all (*lock_fd* below 0: only the binds, ``_probe.is_free``), and
``_locking.names.claim_name_py`` where the lock is a port's name (Linux).

Each returns an int: ``kind | step << 4 | errno << 8``, where *kind* is :data:`CLAIMED`
(0: the lock is held and every bind succeeded), :data:`HELD` (someone holds the lock),
:data:`REFUSED` (bind or setsockopt of *step* failed with *errno*: in use, or worse),
:data:`NO_SOCKET` (``socket()`` of *step* failed) or :data:`LOCK_ERROR` (the lock call
failed otherwise). Anything but CLAIMED leaves nothing behind: a lock taken is dropped.

A plan is :func:`compile_plan` of ``_probe``'s steps: the steps themselves. The name
claim has a compiled version too, ``portsafe._locking._speedups.claim_name`` (built on
Linux where a C compiler is at hand; not with ``PORTSAFE_PURE_PYTHON=1``), whose plans
are bytes: :func:`compile_name_plan` makes them (``tests/locking/test_claim.py`` runs
both versions through every outcome and compares them).
"""

from __future__ import annotations

import _socket

from portsafe._locking.recordlock import BUSY, EXCLUSIVE, LOCKF, UNLOCK
from portsafe._locking.recordlock import try_lock as _try_lock
from portsafe._locking.recordlock import unlock as _unlock
from portsafe._platform import FILES_ON_LINUX
from portsafe._settings import PURE_PYTHON, flag

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable

    #: (level, option, value)
    Option = tuple[int, int, int]
    #: (family, type, host, rest of the sockaddr or (), options)
    Step = tuple[int, int, str, tuple[int, ...], tuple[Option, ...]]
    Plan = bytes | tuple[Step, ...]
    Claim = Callable[..., int]  # (lock_fd, port, plan) -> int, or a name claim's

__all__ = ["CLAIMED", "HELD", "IMPLEMENTATION", "LOCK_ERROR", "NO_SOCKET", "PURE",
           "REFUSED", "SPAN_UNLOCK", "STALE", "claim", "claim_py", "compile_name_plan",
           "compile_plan", "unlock", "unlock_py"]

CLAIMED, HELD, REFUSED, NO_SOCKET, LOCK_ERROR = 0, 1, 2, 3, 4

_new_socket = _socket.socket


def claim_py(lock_fd: int, port: int, plan: Plan) -> int:
    """Lock *port* in *lock_fd* (unless it is below 0), then bind and close each step.

    Example:
        >>> import socket
        >>> steps = ((socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", (), ()),)
        >>> with socket.socket() as held:
        ...     held.bind(("127.0.0.1", 0))
        ...     code = claim_py(-1, held.getsockname()[1], steps)
        >>> code & 15 == REFUSED
        True
    """
    if lock_fd >= 0:
        if LOCKF is not None:
            try:
                LOCKF(lock_fd, EXCLUSIVE, 1, port)
            except OSError as exc:
                return HELD if exc.errno in BUSY else LOCK_ERROR | (exc.errno or 0) << 8
        elif not _try_lock(lock_fd, port):
            return HELD
    steps: tuple[Step, ...] = plan  # type: ignore[assignment]  # the Python version's plan
    for index, (family, kind, host, rest, options) in enumerate(steps):
        try:
            sock = _new_socket(family, kind)
        except OSError as exc:
            code = NO_SOCKET | index << 4 | (exc.errno or 0) << 8
        else:
            try:
                for level, name, value in options:
                    sock.setsockopt(level, name, value)
                sock.bind((host, port, *rest) if rest else (host, port))
                code = CLAIMED
            except OSError as exc:
                code = REFUSED | index << 4 | (exc.errno or 0) << 8
            finally:
                sock.close()
        if code:
            if lock_fd >= 0:
                _unlock(lock_fd, port)
            return code
    return CLAIMED


def unlock_py(lock_fd: int, port: int, length: int = 1) -> int:
    """Drop the lock on *port* (on the *length* ports from it): 0, or the errno.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as file:
        ...     claim_py(file.fileno(), 20000, ()), unlock_py(file.fileno(), 20000)
        (0, 0)
    """
    try:
        if LOCKF is not None:
            LOCKF(lock_fd, UNLOCK, length, port)
        else:
            for byte in range(port, port + length):
                _unlock(lock_fd, byte)
    except OSError as exc:
        return exc.errno or 0
    return 0


def _compile_py(steps: tuple[Step, ...]) -> Plan | None:
    return steps


#: The lock file claim: always the Python version (the compiled module is Linux's, where
#: reservations are names).
claim: Claim = claim_py
unlock: Callable[..., int] = unlock_py  # (lock_fd, port[, length]) -> int
_compile: Callable[[tuple[Step, ...]], Plan | None] = _compile_py
_claim_name: Claim | None = None

#: Whether :func:`unlock` with a length may span bytes this process holds no lock on
#: (POSIX record locks: it unlocks only this process's own). Windows' locks may not.
SPAN_UNLOCK = LOCKF is not None

#: "c" when ``portsafe._locking._speedups`` (the name claim) is in use, else "python".
IMPLEMENTATION = "python"
#: The contract of ``portsafe._locking._speedups`` this version uses (its ``API``).
_API = 4
#: Why a compiled module that is there is not used (it is another version's), or "".
STALE = ""
#: Whether ``PORTSAFE_PURE_PYTHON`` asked for the Python version (read once, here), or
#: the test suite's file-backend channel did (it runs what macOS runs: no C module).
PURE = bool(flag(PURE_PYTHON)) or FILES_ON_LINUX

if not PURE:
    try:
        from portsafe._locking import _speedups

        # All or nothing, and only the module of this version's contract: one left from
        # another portsafe version (an editable install not rebuilt) may lack a function,
        # or take other arguments. The C claim takes only its own (bytes) plans:
        # compile_name_plan pairs them so.
        _compiled = (_speedups.compile, _speedups.claim_name) \
            if getattr(_speedups, "API", None) == _API else None
        if _compiled is None:
            STALE = f"contract {getattr(_speedups, 'API', 1)}, not {_API}"  # 1: no API
    except AttributeError:  # a function missing: from another version too
        _compiled, STALE = None, "a function missing"
    except ImportError:  # not built here (no compiler, not Linux)
        _compiled = None
    if _compiled is not None:
        _compile, _claim_name = _compiled
        IMPLEMENTATION = "c"


def compile_plan(steps: tuple[Step, ...]) -> tuple[Claim, Plan]:
    """(claim function, plan) for *steps*: :func:`claim_py` and the steps.

    Example:
        >>> import socket
        >>> run, plan = compile_plan(((socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1",
        ...                            (), ()),))
        >>> run(-1, 0, plan)
        0
    """
    return claim_py, steps


def compile_name_plan(steps: tuple[Step, ...]) -> tuple[Claim, Plan]:
    """(claim function, plan) for *steps* as a name claim runs them: the compiled
    ``claim_name`` and its bytes where it takes them, else :func:`claim_py` and the steps
    (``_locking.names.compile_claim`` then runs the Python name claim).

    Example:
        >>> import socket
        >>> run, plan = compile_name_plan(((socket.AF_INET, socket.SOCK_STREAM,
        ...                                 "127.0.0.1", (), ()),))
        >>> run is claim_py or type(plan) is bytes
        True
    """
    plan = _compile(steps)
    if _claim_name is not None and type(plan) is bytes:
        return _claim_name, plan
    return claim_py, steps
