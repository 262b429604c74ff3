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

__all__ = ["ALPHABET", "FORMAT", "PREFIX", "SHOWN_PREFIX", "name", "port_of"]

#: The format of a name, also in its prefix: a new format is a new set of names.
FORMAT = 1
#: 64 printable characters, one per six-bit digit.
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: What every port's name starts with, as bound (a leading NUL: the abstract namespace).
PREFIX = b"\0portsafe%d:" % FORMAT
#: The same as ``/proc/net/unix`` shows it (``@`` for the NUL).
SHOWN_PREFIX = "@portsafe%d:" % FORMAT

_DIGITS = ALPHABET.encode()
_NAMES = [PREFIX + bytes((_DIGITS[p >> 12], _DIGITS[(p >> 6) & 63], _DIGITS[p & 63]))
          for p in range(65536)]
_VALUES = {char: value for value, char in enumerate(ALPHABET)}


def name(port: int) -> bytes:
    """The abstract name that holds *port*: the address to bind, leading NUL included.

    Example:
        >>> name(8000)
        b'\\x00portsafe1:B9A'
    """
    return _NAMES[port]


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
