"""A reservation as a name: port P is held while a socket is bound to P's abstract name.

On Linux a reservation of port ``P`` is the abstract unix-socket name :func:`name` of
``P``, bound by a ``SOCK_DGRAM`` socket that the holder keeps open (close-on-exec). The
kernel scopes abstract names per network namespace, exactly as it scopes ports, lets one
socket of a type hold a name whoever asks, and frees it when the holder's last descriptor
of that socket closes (``kill -9`` included). So there is no lock directory to share, to
protect or to get wrong: two processes that can collide on a port see the same names.

The format (``FORMAT``, in the prefix) fixes what a name looks like:

* The type is ``SOCK_DGRAM``: a name is exclusive only within one socket type (a STREAM,
  a DGRAM and a SEQPACKET socket may each bind it), and a DGRAM name cannot be queued
  against as a listening STREAM name can.
* The name is ``\\0portsafe1:`` and the port in three characters of six bits each,
  most significant first, from :data:`ALPHABET` (printable: ``/proc/net/unix`` shows it as
  ``@portsafe1:xyz``, read line by line). The kernel hashes abstract names into 256
  buckets per namespace by a checksum of their bytes: decimal digits differ in only four
  bits each and crowd into a few buckets, six-bit characters spread over all of them.
"""

from __future__ import annotations

import _socket
import errno
import os

from portsafe._locking.claim import HELD, LOCK_ERROR, claim_py, compile_name_plan

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable

    from portsafe._locking.claim import Plan, Step

    NameClaim = Callable[..., int]  # (port, plan, high) -> code

__all__ = ["ALPHABET", "FORMAT", "LOW_FDS", "PREFIX", "SHOWN_PREFIX", "claim_name_py",
           "compile_claim", "name", "port_of"]

_AF_UNIX, _SOCK_DGRAM = _socket.AF_UNIX, _socket.SOCK_DGRAM

#: The format of a name, also in its prefix: a new format is a new set of names.
FORMAT = 1
#: 64 printable characters, one per six-bit digit.
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: What every port's name starts with, as bound (a leading NUL: the abstract namespace).
PREFIX = b"\0portsafe" + str(FORMAT).encode() + b":"
#: The same as ``/proc/net/unix`` shows it (``@`` for the NUL).
SHOWN_PREFIX = f"@portsafe{FORMAT}:"

_DIGITS = ALPHABET.encode()
_VALUES = {char: value for value, char in enumerate(ALPHABET)}


def name(port: int) -> bytes:
    """The abstract name that holds *port*: the address to bind, leading NUL included.

    Example:
        >>> name(8000)
        b'\\x00portsafe1:B9A'
    """
    digits = _DIGITS
    return PREFIX + bytes((digits[port >> 12], digits[(port >> 6) & 63], digits[port & 63]))


def port_of(shown: str) -> int | None:
    """The port a name held, from its text in ``/proc/net/unix``; None if not a port's.

    Example:
        >>> port_of("@portsafe1:B9A"), port_of("@portsafe-keeper"), port_of("/tmp/x")
        (8000, None, None)
    """
    if len(shown) != len(SHOWN_PREFIX) + 3 or not shown.startswith(SHOWN_PREFIX):
        return None
    values = _VALUES
    try:
        high, mid, low = (values[char] for char in shown[-3:])
    except KeyError:
        return None
    port = high << 12 | mid << 6 | low
    return port if port < 65536 else None


# -- the claim: hold a port's name and bind-check the port, in one call -------------------

#: A held name at or above this descriptor is moved up to the table's ``high`` base, so
#: that names do not push the process's own sockets past 1023 (``select()``'s limit).
LOW_FDS = 256


def claim_name_py(port: int, plan: Plan, high: int) -> int:
    """Bind *port*'s name, then bind-check *port* with *plan*: the Python version of
    ``portsafe._locking._speedups.claim_name``, with the same results.

    Returns the descriptor holding the name ``<< 8`` (its low four bits ``CLAIMED``, 0),
    or, with nothing left open, ``HELD`` (someone holds the name), ``LOCK_ERROR`` with
    the errno of the name's ``socket()`` or ``bind()``, or a failed bind's code
    (``_claim``). A descriptor at or above :data:`LOW_FDS` moves to the lowest free one
    from *high*, when *high* is above it.

    Example:
        >>> code = claim_name_py(30001, (), 0)
        >>> code & 15 == 0 or code == HELD
        True
        >>> os.close(code >> 8) if code & 15 == 0 else None
    """
    try:
        sock = _socket.socket(_AF_UNIX, _SOCK_DGRAM)  # close-on-exec, as Python makes them
    except OSError as exc:
        return LOCK_ERROR | (exc.errno or 0) << 8
    try:
        sock.bind(name(port))
    except OSError as exc:
        sock.close()
        return HELD if exc.errno == errno.EADDRINUSE else LOCK_ERROR | (exc.errno or 0) << 8
    code = claim_py(-1, port, plan)
    if code:
        sock.close()
        return code
    fd: int = sock.detach()
    if LOW_FDS <= fd < high:
        import fcntl

        try:
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, high)
        except OSError:
            pass
        else:
            os.close(fd)
            fd = moved
    return fd << 8


def compile_claim(steps: tuple[Step, ...]) -> tuple[NameClaim, Plan]:
    """(claim function, plan) for *steps*: the compiled ``claim_name`` where the C module
    takes them (``claim.compile_name_plan`` decides), else :func:`claim_name_py`.

    Example:
        >>> import socket
        >>> run, plan = compile_claim(((socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1",
        ...                             (), ()),))
        >>> callable(run)
        True
    """
    run, plan = compile_name_plan(steps)
    return (claim_name_py, steps) if run is claim_py else (run, plan)
