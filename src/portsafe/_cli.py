"""The ``portsafe`` command line: ports for shell scripts, Makefiles and CI steps.

Every verb imports what it needs when it runs, so ``portsafe --help`` stays fast and
works even if some part of the library is broken.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys

TYPE_CHECKING = False  # typing is not imported at run time: keep imports cheap
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import FrameType

__all__ = ["main"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_NO_FREE_PORT = 3
EXIT_ERROR = 4
EXIT_CANNOT_EXECUTE = 126
EXIT_COMMAND_NOT_FOUND = 127

_EXIT_CODES = """\
exit codes:
  0    success
  1    nothing found: `who` found no holder, `release` found no lease on that port
  2    usage error: bad arguments or a bad PORTSAFE_* setting
  3    no free port: every candidate was tried and none was free
  4    other error (lock directory unusable, server address taken, ...)
  run: the command's own exit code, 128+N if it died of signal N,
       126 if it cannot be executed, 127 if it is not found
"""

_DESCRIPTION = """\
Reserve network ports that no other portsafe user on this machine gets.

  PORT=$(portsafe)                      a port, held for 60 s by your lease keeper
  portsafe run -- redis-server --port {port}
                                        hold a port for the whole life of a command
  portsafe list | who PORT | ranges     see what is held, by whom, and from where
  portsafe serve                        a port server for PORTSERVER_ADDRESS clients
"""

_VERBS = ("reserve", "release", "run", "list", "who", "ranges", "serve")
_FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6, "both": socket.AF_UNSPEC}
_SOCKTYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "both": 0}
_TOKEN = re.compile(r"\{port(\d*)\}")
_FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM",
              "SIGWINCH")
_KEYBOARD = ("SIGINT", "SIGQUIT")  # also sent by the terminal to the child's group
DEFAULT_LEASE = 60.0


class _UsageError(Exception):
    pass


def _port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    try:
        lo, hi = int(low), int(high if sep else low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LO-HI, e.g. 20000-20999") from None
    if not 1 <= lo <= hi <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= LO <= HI <= 65535")
    return lo, hi


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not in 1..65535")
    return port


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need a whole number >= 1")
    return n


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r}: need seconds >= 0")
    return value


def _add_reserve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=_count, default=1, metavar="N", help="how many ports (default 1)")
    p.add_argument("--contiguous", action="store_true", help="ports P, P+1, ..., P+N-1")
    p.add_argument("--socktype", choices=sorted(_SOCKTYPES), default="tcp",
                   help="free for TCP, UDP or both (default tcp)")
    p.add_argument("--family", choices=sorted(_FAMILIES), default="ipv4",
                   help="free on IPv4, IPv6 or both (default ipv4)")
    p.add_argument("--host", default=None,
                   help="address it must be free on (default: loopback; '' = wildcard)")
    p.add_argument("--range", type=_port_range, metavar="LO-HI",
                   help="pick from these ports instead of the default candidates")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (exposed for documentation and tests).

    Returns:
        The ``portsafe`` parser with one sub-parser per verb.

    Example:
        >>> build_parser().parse_args(["who", "8080"]).port
        8080
    """
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="portsafe", description=_DESCRIPTION,
                                     epilog=_EXIT_CODES, formatter_class=fmt)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    p = verbs.add_parser(
        "reserve", formatter_class=fmt, epilog=_EXIT_CODES,
        help="print reserved port(s), held for a lease (the default verb)",
        description="Print reserved port(s) on one line. Your lease keeper (one detached "
        "process per user, started on demand) holds them for --lease seconds after this "
        "command returns, so `PORT=$(portsafe)` is protected until your server binds. "
        "If no keeper can be started, the port is printed unheld with a warning.")
    _add_reserve_options(p)
    p.add_argument("--lease", type=_seconds, default=DEFAULT_LEASE, metavar="SECONDS",
                   help="hold for this long after returning (default 60; 0 = not at all)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = verbs.add_parser("release", formatter_class=fmt, epilog=_EXIT_CODES,
                         help="end a lease early",
                         description="End the lease on PORT now (exit 1 if none).")
    p.add_argument("port", type=_port, metavar="PORT")

    p = verbs.add_parser(
        "run", formatter_class=fmt, epilog=_EXIT_CODES,
        help="run a command holding port(s) for its whole life",
        usage="portsafe run [-n N] [options] -- COMMAND [ARGS...]",
        description="Reserve port(s), replace the tokens {port} ({port0}, {port1}, ... "
        "with -n) in COMMAND and ARGS, set PORTSAFE_PORT (and PORTSAFE_PORTS, "
        "space-separated), run COMMAND holding the reservation until it exits, pass "
        "signals on to it, and exit with its exit code (128+N if it died of signal N).")
    _add_reserve_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    p = verbs.add_parser("list", formatter_class=fmt, epilog=_EXIT_CODES,
                         help="the reservations held on this machine now",
                         description="List every port reserved through portsafe on this "
                         "machine, with the holding pid and its command line where the OS "
                         "tells, and the lease time left for ports your keeper holds.")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = verbs.add_parser("who", formatter_class=fmt, epilog=_EXIT_CODES,
                         help="who holds a port",
                         description="Show the portsafe reservation and the sockets on PORT "
                         "(TCP and UDP), with their processes. Exit 1 if nobody holds it.")
    p.add_argument("port", type=_port, metavar="PORT")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = verbs.add_parser("ranges", formatter_class=fmt, epilog=_EXIT_CODES,
                         help="where portsafe picks ports from, and why",
                         description="Show the ephemeral range, reserved ports, the "
                         "candidates portsafe picks from and the exclusions, with sources.")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = verbs.add_parser(
        "serve", formatter_class=fmt, epilog=_EXIT_CODES,
        help="run a port server speaking portpicker's protocol",
        description="Serve ports to PORTSERVER_ADDRESS clients (portpicker, and portsafe "
        "itself): one port per request, held for the requesting pid until it exits, "
        "reserved through portsafe so local portsafe users avoid it. Stops on SIGTERM.")
    p.add_argument("--address", default="@unittest-portserver",
                   help="unix socket: @NAME (abstract namespace) or a PATH "
                   "(default @unittest-portserver, portpicker's)")
    p.add_argument("--range", type=_port_range, metavar="LO-HI",
                   help="ports to hand out (default: portsafe's candidates)")
    p.add_argument("--verbose", action="store_true", help="log each grant and reclaim")
    return parser


def _split_argv(argv: list[str]) -> list[str]:
    """Make ``reserve`` the default verb (``portsafe``, ``portsafe -n 2``)."""
    if not argv:
        return ["reserve"]
    first = argv[0]
    if first in _VERBS or first in ("-h", "--help", "--version"):
        return argv
    return ["reserve", *argv]


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
    args_list = _split_argv(list(sys.argv[1:] if argv is None else argv))
    command: list[str] | None = None
    if args_list[0] == "run" and "--" in args_list:
        cut = args_list.index("--")
        args_list, command = args_list[:cut], args_list[cut + 1:]
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.version:
        from importlib.metadata import version

        print(f"portsafe {version('portsafe')}")
        return EXIT_OK
    if command is not None:
        args.command = command
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    verb = {"reserve": _reserve, "release": _release, "run": _run, "list": _list,
            "who": _who, "ranges": _ranges, "serve": _serve}[args.verb]
    try:
        return verb(args)
    except _UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        from portsafe._errors import NoFreePortError

        _error(str(exc.strerror or exc) if isinstance(exc, NoFreePortError) else str(exc))
        return EXIT_NO_FREE_PORT if isinstance(exc, NoFreePortError) else EXIT_ERROR
    except ValueError as exc:  # InvalidSettingError: a bad PORTSAFE_* setting
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def _error(message: str) -> None:
    print(f"portsafe: error: {message}", file=sys.stderr)


def _reserve_kwargs(args: argparse.Namespace) -> dict[str, object]:
    return {
        "contiguous": args.contiguous, "host": args.host, "family": _FAMILIES[args.family],
        "socktype": _SOCKTYPES[args.socktype],
        "ports": range(args.range[0], args.range[1] + 1) if args.range else None,
    }


def _reserve_here(args: argparse.Namespace) -> list[int]:
    """Reserve in this process, print-and-release: verified free, but not held."""
    import portsafe

    with portsafe.reserve_ports(args.n, **_reserve_kwargs(args)) as group:  # type: ignore[arg-type]
        return list(group.ports)


# --- reserve / release -----------------------------------------------------------------


def _reserve(args: argparse.Namespace) -> int:
    from portsafe import _keeper

    holder: int | None = None
    lease = args.lease
    if lease == 0:
        ports = _reserve_here(args)
    else:
        request = {"op": "reserve", "n": args.n, "contiguous": args.contiguous,
                   "host": args.host, "family": args.family, "socktype": args.socktype,
                   "range": list(args.range) if args.range else None, "lease": lease}
        try:
            reply = _keeper.call(request)
        except _keeper.KeeperError as exc:
            ports = _reserve_here(args)
            print(f"portsafe: warning: {exc.strerror or exc}; port(s) "
                  f"{' '.join(map(str, ports))} are not held after this command exits. "
                  "Use `portsafe run -- COMMAND` to hold them for the command's life.",
                  file=sys.stderr)
            lease = 0
        else:
            if not reply.get("ok"):
                _error(str(reply.get("error")))
                kind = reply.get("kind")
                return EXIT_NO_FREE_PORT if kind == "NoFreePortError" else (
                    EXIT_USAGE if kind == "InvalidSettingError" else EXIT_ERROR)
            ports = [int(p) for p in reply["ports"]]  # type: ignore[attr-defined]
            holder = int(reply["pid"])  # type: ignore[call-overload]
    if args.json:
        print(json.dumps({"ports": ports, "lease": lease, "holder_pid": holder}))
    else:
        print(" ".join(map(str, ports)))
    return EXIT_OK


def _release(args: argparse.Namespace) -> int:
    from portsafe import _keeper

    try:
        reply = _keeper.call({"op": "release", "port": args.port}, start=False)
    except _keeper.KeeperNotRunningError:
        reply = {"released": False}
    if reply.get("released"):
        return EXIT_OK
    print(f"portsafe: no lease on port {args.port} (see `portsafe list`)", file=sys.stderr)
    return EXIT_NOT_FOUND


# --- run -------------------------------------------------------------------------------


def substitute(arg: str, ports: Sequence[int]) -> str:
    """Replace the tokens ``{port}`` and ``{portK}`` in one argument; nothing else.

    Args:
        arg: A command-line argument.
        ports: The reserved ports; ``{port}`` is the first, ``{portK}`` the K-th from 0.

    Returns:
        The argument with the tokens replaced (JSON and other braces untouched).

    Raises:
        ValueError: A ``{portK}`` token names a port that was not reserved.

    Example:
        >>> substitute('{"port": {port}, "x": {}}', [8123])
        '{"port": 8123, "x": {}}'
    """

    def swap(match: re.Match[str]) -> str:
        index = int(match.group(1)) if match.group(1) else 0
        if index >= len(ports):
            raise ValueError(f"{match.group(0)} in {arg!r} names port {index}, but only "
                             f"{len(ports)} were reserved: pass -n {index + 1}")
        return str(ports[index])

    return _TOKEN.sub(swap, arg)


def _in_terminal_foreground() -> bool:
    """True if our process group is the terminal's foreground group: then a keyboard
    signal (Ctrl-C, Ctrl-\\) already reached the child, which shares the group."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            return os.tcgetpgrp(fd) == os.getpgrp()
    return False


def _run(args: argparse.Namespace) -> int:
    import portsafe

    command = list(args.command or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise _UsageError("run needs a command: portsafe run [options] -- COMMAND [ARGS...]")
    with portsafe.reserve_ports(args.n, **_reserve_kwargs(args)) as group:  # type: ignore[arg-type]
        ports = list(group.ports)
        try:
            argv = [substitute(arg, ports) for arg in command]
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
        env = dict(os.environ, PORTSAFE_PORT=str(ports[0]),
                   PORTSAFE_PORTS=" ".join(map(str, ports)))
        try:
            code = _run_forwarding_signals(lambda: subprocess.Popen(argv, env=env))
        except FileNotFoundError:
            _error(f"command not found: {argv[0]}")
            return EXIT_COMMAND_NOT_FOUND
        except PermissionError:
            _error(f"cannot execute {argv[0]}: permission denied")
            return EXIT_CANNOT_EXECUTE
        except OSError as exc:
            _error(f"cannot execute {argv[0]}: {exc}")
            return EXIT_CANNOT_EXECUTE
    return code if code >= 0 else 128 - code


def _run_forwarding_signals(start: Callable[[], subprocess.Popen[bytes]]) -> int:
    """Start the child with *start* and wait for it, passing signals on to it.

    The handlers go in *before* the child starts: a signal that arrives while it is
    being spawned is queued and delivered once it exists, instead of meeting this
    process's inherited disposition (often "ignore" for SIGHUP under CI runners).
    """
    children: list[subprocess.Popen[bytes]] = []
    pending: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if name in _KEYBOARD and _in_terminal_foreground():
            return
        if not children:
            pending.append(signum)
        elif children[0].returncode is None:
            with contextlib.suppress(OSError):  # it exited meanwhile
                children[0].send_signal(signum)

    previous: dict[int, object] = {}
    for name in _FORWARDED:
        signum = getattr(signal, name, None)
        if signum is not None:
            previous[signum] = signal.signal(signum, forward)
    try:
        child = start()
        children.append(child)
        for signum in pending:
            with contextlib.suppress(OSError):
                child.send_signal(signum)
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


# --- list / who / ranges ---------------------------------------------------------------


def _command_of(pid: int | None) -> str | None:
    if pid is None:
        return None
    from portsafe._server import _command_line

    text = " ".join(_command_line(pid).split())  # one line, even for `python -c "..."`
    return None if text == "?" else text


def _keeper_leases() -> dict[int, dict[str, object]]:
    from portsafe import _keeper

    try:
        reply = _keeper.call({"op": "list"}, start=False, timeout=2.0)
    except (_keeper.KeeperError, OSError):
        return {}
    leases = reply.get("leases")
    if not isinstance(leases, list):
        return {}
    return {int(item["port"]): item for item in leases if isinstance(item, dict)}


def _list(args: argparse.Namespace) -> int:
    from portsafe import _locks

    leases = _keeper_leases()
    rows = []
    for port, pid in _locks.holders():
        lease = leases.get(port)
        rows.append({"port": port, "pid": pid, "command": _command_of(pid),
                     "lease_expires_in": lease.get("expires_in") if lease else None})
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no ports are reserved through portsafe on this machine")
        return EXIT_OK
    print(f"{'PORT':>5}  {'PID':>7}  {'LEASE':>6}  COMMAND")
    for row in rows:
        expires = row["lease_expires_in"]
        lease_text = f"{float(expires):.0f}s" if isinstance(expires, (int, float)) else "-"
        print(f"{row['port']:>5}  {row['pid']:>7}  {lease_text:>6}  {row['command'] or '?'}")
    return EXIT_OK


def _who(args: argparse.Namespace) -> int:
    from portsafe import _locks

    reserved = [{"pid": pid, "command": _command_of(pid)}
                for port, pid in _locks.holders() if port == args.port]
    try:
        from portsafe._who import who_holds

        holders = who_holds(args.port, socktype=0)
    except ImportError as exc:  # pragma: no cover - a broken install
        _error(f"cannot inspect sockets: {exc}")
        holders = []
    sockets = [{"pid": h.pid, "command": h.command, "state": h.state, "host": h.host,
                "port": h.port, "family": "ipv6" if h.family == socket.AF_INET6 else "ipv4",
                "socktype": "udp" if h.socktype == socket.SOCK_DGRAM else "tcp"}
               for h in holders]
    if args.json:
        print(json.dumps({"port": args.port, "reserved_by": reserved, "sockets": sockets},
                         indent=2))
    else:
        if not reserved and not sockets:
            print(f"port {args.port}: nobody holds it (no reservation, no socket seen)")
        for item in reserved:
            print(f"port {args.port}: reserved by pid {item['pid']} "
                  f"({item['command'] or '?'})")
        for h in holders:
            kind = "udp" if h.socktype == socket.SOCK_DGRAM else "tcp"
            host = f"[{h.host}]" if ":" in h.host else h.host
            print(f"port {args.port}: {kind} {h.state} {host}:{h.port} {h.describe()}")
    return EXIT_OK if reserved or sockets else EXIT_NOT_FOUND


def _ranges(args: argparse.Namespace) -> int:
    from portsafe._ranges import describe_ranges

    info = describe_ranges()
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    for key, value in info.items():
        if isinstance(value, dict):
            summary = dict(value)
            ranges = summary.pop("ranges", None)
            if isinstance(ranges, list):
                shown = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo)
                                  for lo, hi in ranges[:6])
                summary["ranges"] = (shown + (f", ... ({len(ranges)} spans)"
                                              if len(ranges) > 6 else "")) or "none"
            print(f"{key}:")
            for k, v in summary.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return EXIT_OK


# --- serve -----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from portsafe._server import ServerAddressInUseError, serve

    ports = range(args.range[0], args.range[1] + 1) if args.range else None
    try:
        serve(args.address, ports=ports, verbose=args.verbose)
    except ServerAddressInUseError as exc:
        _error(str(exc.strerror))
        return EXIT_ERROR
    return EXIT_OK
