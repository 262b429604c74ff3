"""The ``portsafe`` command line: ports for shell scripts, Makefiles and CI steps.

``PORT=$(portsafe)`` is the common case, so it has a fast path: no argparse and no
module but the keeper's client (:mod:`portsafe._services.keeper_client`). Every other verb builds
only its own parser (:mod:`portsafe._cli.parsers`) and imports what it needs when it
runs, so ``portsafe --help`` stays fast and works even if some part of the library is
broken.
"""

from __future__ import annotations

import os
import sys

from portsafe._errors import KeeperError, KeeperNotRunningError

TYPE_CHECKING = False  # typing is not imported at run time: keep imports cheap
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

__all__ = ["main"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_NO_FREE_PORT = 3
EXIT_ERROR = 4
EXIT_CANNOT_EXECUTE = 126
EXIT_COMMAND_NOT_FOUND = 127
DEFAULT_LEASE = 60.0

VERBS = ("reserve", "release", "run", "list", "who", "ranges", "doctor", "serve")
# What the keeper's reply "kind" (an exception name) means as an exit code.
_EXIT_BY_KIND = {"NoFreePortError": EXIT_NO_FREE_PORT, "InvalidSettingError": EXIT_USAGE,
                 "AddressNotAvailableError": EXIT_USAGE}
_FAST_REQUEST = (b'{"op": "reserve", "n": 1, "contiguous": false, "host": null, '
                 b'"family": "ipv4", "socktype": "tcp", "range": null, "lease": 60.0}\n')
NOT_HELD_ADVICE = ("nothing holds the port after this command exits, so none is printed. "
                   "Use `portsafe run -- COMMAND` (holds the port for the command's life, "
                   "no keeper needed), or `portsafe --lease 0` for a number that is free "
                   "now but not held")


class UsageError(Exception):
    """A bad command line: exit 2 with this message."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``portsafe`` command line and return its exit code.

    Args:
        argv: The arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit code (see ``portsafe --help``).

    Example:
        >>> main(["ranges", "--json"])  # doctest: +SKIP
        0
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _fast_reserve() if not args else _main(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left early (`portsafe ranges --json | head -c 10`): not our error.
        # Point stdout at /dev/null so the interpreter's final flush cannot fail again,
        # as the Python docs recommend (signal module, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    return code


def _main(args: list[str]) -> int:
    first = args[0]
    if first in ("-h", "--help"):
        from portsafe._cli.parsers import build_parser

        build_parser().print_help()
        return EXIT_OK
    if first == "--version":
        from importlib.metadata import version

        print(f"portsafe {version('portsafe')}")
        return EXIT_OK
    if first in VERBS:
        verb, rest = first, args[1:]
    elif first.startswith("-"):
        verb, rest = "reserve", args
    else:
        return _unknown_verb(first)
    command: list[str] | None = None
    if verb == "run" and "--" in rest:
        cut = rest.index("--")
        rest, command = rest[:cut], rest[cut + 1:]
    from portsafe._cli.parsers import verb_parser

    try:
        parsed = verb_parser(verb).parse_args(rest)
    except SystemExit as exc:
        return int(exc.code or 0)
    if command is not None:
        parsed.command = command
    return dispatch(verb, parsed)


def _unknown_verb(word: str) -> int:
    import difflib

    close = difflib.get_close_matches(word, VERBS, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"verbs: {', '.join(VERBS)}"
    error(f"unknown verb '{word}'; {hint} (see `portsafe --help`)")
    return EXIT_USAGE


# verb -> (module, function), imported only for the verb that runs
_VERB_FUNCTIONS = {
    "reserve": ("portsafe._cli.main", "reserve_verb"),
    "release": ("portsafe._cli.main", "release_verb"),
    "run": ("portsafe._cli.run", "run_verb"), "list": ("portsafe._cli.show", "list_verb"),
    "who": ("portsafe._cli.show", "who_verb"), "ranges": ("portsafe._cli.show", "ranges_verb"),
    "doctor": ("portsafe._cli.doctor", "doctor_verb"),
    "serve": ("portsafe._cli.show", "serve_verb"),
}


def _verb_function(verb: str) -> Callable[[argparse.Namespace], int]:
    from importlib import import_module

    module, function = _VERB_FUNCTIONS[verb]
    return getattr(import_module(module), function)  # type: ignore[no-any-return]


def dispatch(verb: str, args: argparse.Namespace) -> int:  # noqa: PLR0911 - one per error
    """Run *verb* with its parsed *args*, turning errors into messages and exit codes.

    Example:
        >>> import argparse
        >>> dispatch("release", argparse.Namespace(port=[1]))  # doctest: +SKIP
        1
    """
    from portsafe._errors import AddressNotAvailableError, NoFreePortError, PortsafeError

    try:
        return _verb_function(verb)(args)
    except UsageError as exc:
        error(str(exc))
        return EXIT_USAGE
    except NoFreePortError as exc:
        error(no_free_port_message(str(exc.strerror or exc), getattr(args, "n", 1),
                                   exc.candidates))
        return EXIT_NO_FREE_PORT
    except AddressNotAvailableError as exc:
        error(str(exc.strerror or exc))
        return EXIT_USAGE
    except BrokenPipeError:
        raise  # the reader left: main() handles it
    except OSError as exc:
        error(str(exc.strerror or exc) if isinstance(exc, PortsafeError) else str(exc))
        return EXIT_ERROR
    except ValueError as exc:  # InvalidSettingError: a bad PORTSAFE_* setting
        error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def error(message: str) -> None:
    """Print ``portsafe: error: MESSAGE`` on stderr.

    Example:
        >>> error("x")  # doctest: +SKIP
    """
    print(f"portsafe: error: {message}", file=sys.stderr)


def plural(count: int, noun: str) -> str:
    """``1 port``, ``2 ports``.

    Example:
        >>> plural(1, "port"), plural(3, "port")
        ('1 port', '3 ports')
    """
    return f"{count} {noun}{'' if count == 1 else 's'}"


def no_free_port_message(message: str, n: int, candidates: object) -> str:
    """The core's NoFreePortError message, told in the command line's terms.

    Example:
        >>> no_free_port_message("...", 100000, 36094)  # doctest: +ELLIPSIS
        'cannot reserve 100000 ports: there are only 36094 candidate ports; ...'
    """
    if isinstance(candidates, int) and 0 < candidates < n:
        return (f"cannot reserve {plural(n, 'port')}: there are only "
                f"{plural(candidates, 'candidate port')}; ask for fewer with -n, or pick "
                "from a wider range with --range LO-HI (or PORTSAFE_RANGE)")
    import re

    # The core speaks Python (ports=...); this is the command line (--range LO-HI).
    message = message.replace("(ports=..., PORTSAFE_RANGE)", "(--range LO-HI, or "
                              "PORTSAFE_RANGE)").replace("(ports=", "(--range ")
    message = re.sub(r"\bno 1 (contiguous )?free ports\b", "no free port", message)
    return re.sub(r"\b1 (candidate port|port)s\b", r"1 \1", message)


# --- reserve / release -----------------------------------------------------------------


def _fast_reserve() -> int:
    """``portsafe`` with no arguments: one port from the keeper, nothing else loaded."""
    from portsafe._services import keeper_client as _keeper_client

    try:
        reply = _keeper_client.call_line(_FAST_REQUEST, start=True, timeout=10.0)
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
        from portsafe._services import keeper_client as _keeper_client

        request = {"op": "reserve", "n": args.n, "contiguous": args.contiguous,
                   "host": args.host, "family": args.family, "socktype": args.socktype,
                   "range": list(args.range) if args.range else None, "lease": args.lease}
        try:
            reply = _keeper_client.call(request)
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
    from portsafe._services import keeper_client as _keeper_client

    code = EXIT_OK
    for port in args.port:
        try:
            reply = _keeper_client.call({"op": "release", "port": port}, start=False)
        except KeeperNotRunningError:
            reply = {"released": False}
        if not reply.get("released"):
            print(f"portsafe: no lease on port {port} (see `portsafe list`)", file=sys.stderr)
            code = EXIT_NOT_FOUND
    return code
