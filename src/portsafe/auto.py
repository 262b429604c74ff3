"""Auto mode: race-free ports for code that was never written for portsafe.

With auto mode on, every bind of a TCP or UDP socket to port 0 gets a port portsafe
reserved, the known pickers (portpicker, ephemeral-port-reserve, port-for) hand out
reserved ports, and on Linux a scanner's probe of an explicit port leases that port to
its family, so the scanners of other processes move on. What auto mode saw and could
not cover is counted by :func:`stats`, with the ``file:line`` of the calling code.
See docs/auto.md.

Example:
    >>> import portsafe.auto
    >>> portsafe.auto.enable()
    >>> portsafe.auto.stats()["fallbacks"]
    0
    >>> portsafe.auto.disable()
"""

from __future__ import annotations

from portsafe._auto import switch

__all__ = ["disable", "enable", "stats"]


def enable() -> None:
    """Turn auto mode on in this process and, through ``PORTSAFE_AUTO=1`` and a family
    token in ``PORTSAFE_AUTO_FAMILY``, in the processes it starts. Idempotent.

    Example:
        >>> import socket
        >>> enable()
        >>> with socket.socket() as sock:
        ...     sock.bind(("127.0.0.1", 0))
        >>> disable()
    """
    switch.enable()


def disable() -> None:
    """Turn auto mode off: remove every patch, release every port it holds, and give
    ``PORTSAFE_AUTO`` back its earlier value.

    Example:
        >>> disable()
    """
    switch.disable()


def stats() -> dict[str, object]:
    """What auto mode did in this process, JSON-ready.

    Returns:
        ``reserved`` (ports reserved by binds to port 0 and known pickers),
        ``fallbacks`` and ``fallback_reasons`` (binds that got the kernel's pick),
        ``leases_held``, ``probes_leased`` (explicit-port probes leased to this
        family), ``refused_by_lease`` (explicit binds refused with EADDRINUSE because
        another family's probe held the port) and ``uncovered`` (pickers seen and not
        covered: ``{"what", "where", "count"}`` each, *where* being ``file:line``).

    Example:
        >>> sorted(stats())  # doctest: +NORMALIZE_WHITESPACE
        ['fallback_reasons', 'fallbacks', 'leases_held', 'probes_leased',
         'refused_by_lease', 'reserved', 'uncovered']
    """
    return switch.stats()
