"""The reserving verbs: the bare call ``PORT=$(portsafe)``, ``reserve`` and ``release``.

``PORT=$(portsafe)`` is the common case, so :func:`bare` loads no argparse, json or
socket, and no portsafe module but the keeper's client
(:mod:`portsafe._services.keeper_client`): its cost is interpreter start-up plus one
round trip to the keeper, which holds the port for the lease.
"""

from __future__ import annotations

import sys

from portsafe._cli.exits import (
    EXIT_ERROR,
    EXIT_NO_FREE_PORT,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    error,
    no_free_port_message,
)
from portsafe._errors import KeeperError, KeeperNotRunningError

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    import argparse

__all__ = ["NOT_HELD_ADVICE", "bare", "release_verb", "reserve_here", "reserve_kwargs",
           "reserve_verb"]

# What the keeper's reply "kind" (an exception name) means as an exit code.
_EXIT_BY_KIND = {"NoFreePortError": EXIT_NO_FREE_PORT, "InvalidSettingError": EXIT_USAGE,
                 "AddressNotAvailableError": EXIT_USAGE}
# `portsafe reserve`'s defaults as the keeper's request, encoded once.
_BARE_REQUEST = (b'{"op": "reserve", "n": 1, "contiguous": false, "host": null, '
                 b'"family": "ipv4", "socktype": "tcp", "range": null, "lease": 60.0}\n')
NOT_HELD_ADVICE = ("nothing holds the port after this command exits, so none is printed. "
                   "Use `portsafe run -- COMMAND` (holds the port for the command's life, "
                   "no keeper needed), or `portsafe --lease 0` for a number that is free "
                   "now but not held")


def bare() -> int:
    """``portsafe`` with no arguments: one port leased from the keeper, printed.

    Example:
        >>> bare()  # doctest: +SKIP
        0
    """
    from portsafe._services import keeper_client

    try:
        reply = keeper_client.call_line(_BARE_REQUEST, start=True, timeout=10.0)
    except KeeperError as exc:
        error(f"{exc.strerror or exc}; {NOT_HELD_ADVICE}")
        return EXIT_ERROR
    except ValueError as exc:  # InvalidSettingError: PORTSAFE_LOCK_DIR, _KEEPER_IDLE
        error(str(exc))
        return EXIT_USAGE
    ports = reply.get("ports")
    if not reply.get("ok") or not isinstance(ports, list):
        return _refused(reply, 1)
    print(" ".join(map(str, ports)))
    return EXIT_OK


def _refused(reply: dict[str, object], n: int) -> int:
    kind = str(reply.get("kind"))
    message = str(reply.get("error"))
    if kind == "NoFreePortError":
        message = no_free_port_message(message, n, reply.get("candidates"))
    error(message)
    return _EXIT_BY_KIND.get(kind, EXIT_ERROR)


def reserve_verb(args: argparse.Namespace) -> int:
    """``portsafe reserve``: a port leased from the keeper (or, with --lease 0, unheld).

    Example:
        >>> from portsafe._cli.parsers import verb_parser
        >>> reserve_verb(verb_parser("reserve").parse_args(["--lease", "0"]))  # doctest: +SKIP
        0
    """
    import json

    holder: int | None = None
    if args.lease == 0:
        ports = reserve_here(args)
    else:
        from portsafe._services import keeper_client

        request = {"op": "reserve", "n": args.n, "contiguous": args.contiguous,
                   "host": args.host, "family": args.family, "socktype": args.socktype,
                   "range": list(args.range) if args.range else None, "lease": args.lease}
        try:
            reply = keeper_client.call(request)
        except KeeperError as exc:
            error(f"{exc.strerror or exc}; {NOT_HELD_ADVICE}")
            return EXIT_ERROR
        if not reply.get("ok"):
            return _refused(reply, args.n)
        ports = [int(p) for p in reply["ports"]]  # type: ignore[attr-defined]
        holder = int(reply["pid"])  # type: ignore[call-overload]
    if args.json:
        print(json.dumps({"ports": ports, "lease": args.lease, "holder_pid": holder}))
    else:
        print(" ".join(map(str, ports)))
    return EXIT_OK


def reserve_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """The ``reserve_ports`` keyword arguments for the parsed reserve options.

    Example:
        >>> from portsafe._cli.parsers import verb_parser
        >>> reserve_kwargs(verb_parser("reserve").parse_args([]))["ports"] is None
        True
    """
    import socket

    families = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6, "both": socket.AF_UNSPEC}
    socktypes = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "both": 0}
    return {
        "contiguous": args.contiguous, "host": args.host, "family": families[args.family],
        "socktype": socktypes[args.socktype],
        "ports": range(args.range[0], args.range[1] + 1) if args.range else None,
    }


def reserve_here(args: argparse.Namespace) -> list[int]:
    """Reserve in this process, print-and-release: verified free, but not held.

    Example:
        >>> from portsafe._cli.parsers import verb_parser
        >>> len(reserve_here(verb_parser("reserve").parse_args(["-n", "2"])))
        2
    """
    import portsafe

    with portsafe.reserve_ports(args.n, **reserve_kwargs(args)) as group:  # type: ignore[arg-type]
        return list(group.ports)


def release_verb(args: argparse.Namespace) -> int:
    """``portsafe release PORT...``: end leases early; exit 1 if one had none.

    Example:
        >>> import argparse
        >>> release_verb(argparse.Namespace(port=[1]))  # doctest: +SKIP
        1
    """
    from portsafe._services import keeper_client

    code = EXIT_OK
    for port in args.port:
        try:
            reply = keeper_client.call({"op": "release", "port": port}, start=False)
        except KeeperNotRunningError:
            reply = {"released": False}
        if not reply.get("released"):
            print(f"portsafe: no lease on port {port} (see `portsafe list`)", file=sys.stderr)
            code = EXIT_NOT_FOUND
    return code
