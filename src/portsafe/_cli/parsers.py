"""The command line's argument parsers, one per verb, each built only when it is used.

Building all of them for every call cost about 10 ms, more than the keeper round trip.
"""

from __future__ import annotations

import argparse

from portsafe._settings import LEASE_DEFAULT

__all__ = ["build_parser", "verb_parser"]

EXIT_CODES = """\
exit codes:
  0    success
  1    nothing found: `who` found no holder, `release` found no lease on that port,
       `doctor` found a problem
  2    usage error: bad arguments, a bad PORTSAFE_* setting, an address that is not
       this machine's
  3    no free port: every candidate was tried and none was free
  4    other error (lock directory unusable, no lease keeper to hold the port, server
       address taken, ...)
  run: the command's own exit code, 128+N if it died of signal N,
       126 if it cannot be executed, 127 if it is not found
"""

DESCRIPTION = """\
Reserve network ports that no other portsafe user on this machine gets.

  PORT=$(portsafe)                      a port, held for 60 s by your lease keeper
  portsafe run -- redis-server --port {port}
                                        hold a port for the whole life of a command
  portsafe list | who PORT | ranges     see what is held, by whom, and from where
  portsafe doctor                       check this machine's set-up, and explain it
  portsafe serve                        a port server for PORTSERVER_ADDRESS clients
"""

_FMT = argparse.RawDescriptionHelpFormatter
_HELP = {
    "reserve": "print reserved port(s), held for a lease (the default verb)",
    "release": "end a lease early",
    "run": "run a command holding port(s) for its whole life",
    "list": "the reservations held on this machine now",
    "who": "who holds a port",
    "ranges": "where portsafe picks ports from, and why",
    "doctor": "check the lock directory, ranges and keeper; explain what is wrong",
    "serve": "run a port server speaking portpicker's protocol",
}


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
    if not 1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: need a whole number in 1..65535")
    return n


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r}: need seconds >= 0")
    return value


def _reserve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=_count, default=1, metavar="N", help="how many ports (default 1)")
    p.add_argument("--contiguous", action="store_true", help="ports P, P+1, ..., P+N-1")
    p.add_argument("--socktype", choices=("both", "tcp", "udp"), default="tcp",
                   help="free for TCP, UDP or both (default tcp)")
    p.add_argument("--family", choices=("both", "ipv4", "ipv6"), default="ipv4",
                   help="free on IPv4, IPv6 or both (default ipv4)")
    p.add_argument("--host", default=None,
                   help="an address of this machine it must be free on (default: "
                   "loopback; '' = wildcard)")
    p.add_argument("--range", type=_port_range, metavar="LO-HI",
                   help="pick from these ports instead of the default candidates")


def _reserve(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Print reserved port(s) on one line. Your lease keeper (one detached process per "
        "user, started on demand) holds them for --lease seconds after this command "
        "returns, so `PORT=$(portsafe)` is protected until your server binds. If no "
        "keeper can hold them, nothing is printed and the exit code is 4.")
    _reserve_options(p)
    p.add_argument("--lease", type=_seconds, default=LEASE_DEFAULT, metavar="SECONDS",
                   help="hold for this long after returning (default 60; 0 = not at all: "
                   "free now, but not held)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _release(p: argparse.ArgumentParser) -> None:
    p.description = "End the lease on each PORT now (exit 1 if one had none)."
    p.add_argument("port", type=_port, nargs="+", metavar="PORT")


def _run(p: argparse.ArgumentParser) -> None:
    p.usage = "portsafe run [-n N] [options] -- COMMAND [ARGS...]"
    p.description = (
        "Reserve port(s), replace the tokens {port} ({port0}, {port1}, ... with -n) in "
        "COMMAND and ARGS, set PORTSAFE_PORT (and PORTSAFE_PORTS, space-separated), run "
        "COMMAND holding the reservation until it exits, pass signals on to it, and exit "
        "with its exit code (128+N if it died of signal N).")
    _reserve_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def _list(p: argparse.ArgumentParser) -> None:
    p.description = (
        "List every port reserved through portsafe on this machine, with the holding pid "
        "and its command line where the OS tells, and the lease time left for ports your "
        "keeper holds.")
    p.add_argument("--json", action="store_true", help="print JSON")


def _who(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Show the portsafe reservation and the sockets on each PORT (TCP and UDP), with "
        "their processes. Exit 1 if nobody holds any of them.")
    p.add_argument("port", type=_port, nargs="+", metavar="PORT")
    p.add_argument("--json", action="store_true",
                   help="print JSON (one object; a list of them for several ports)")


def _ranges(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Show the ephemeral range, reserved ports, the candidates portsafe picks from and "
        "the exclusions, with sources.")
    p.add_argument("--json", action="store_true", help="print JSON")


def _doctor(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Check what portsafe relies on: the lock directory (owner, mode, who else could "
        "interfere, tmp cleaners, whether record locks work on its file system), the "
        "ephemeral range, reserved ports and your lease keeper. Each problem comes with "
        "what to do. Exit 0 only when all is well, 1 otherwise.")
    p.add_argument("--json", action="store_true", help="print JSON")


def _serve(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Serve ports to PORTSERVER_ADDRESS clients (portpicker, and portsafe itself): one "
        "port per request, held for the requesting pid until it exits, reserved through "
        "portsafe so local portsafe users avoid it. Stops on SIGTERM.")
    p.add_argument("--address", default=None,
                   help="unix socket: @NAME (abstract namespace, Linux) or a PATH (default "
                   "@unittest-portserver on Linux, portpicker's; elsewhere a path under "
                   "/tmp/portsafe-portserver-UID)")
    p.add_argument("--range", type=_port_range, metavar="LO-HI",
                   help="ports to hand out (default: portsafe's candidates)")
    p.add_argument("--verbose", action="store_true", help="log each grant and reclaim")


_BUILDERS = {"reserve": _reserve, "release": _release, "run": _run, "list": _list,
             "who": _who, "ranges": _ranges, "doctor": _doctor, "serve": _serve}


def verb_parser(verb: str) -> argparse.ArgumentParser:
    """Return the parser of one verb (``portsafe VERB ...``).

    Args:
        verb: One of ``reserve release run list who ranges doctor serve``.

    Returns:
        The parser; its ``prog`` is ``portsafe VERB``.

    Example:
        >>> verb_parser("who").parse_args(["8080", "8081"]).port
        [8080, 8081]
    """
    parser = argparse.ArgumentParser(prog=f"portsafe {verb}", formatter_class=_FMT,
                                     epilog=EXIT_CODES)
    _BUILDERS[verb](parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Return the whole parser, every verb a sub-parser (for ``--help`` and the docs).

    Returns:
        The ``portsafe`` parser with one sub-parser per verb.

    Example:
        >>> build_parser().parse_args(["who", "8080"]).port
        [8080]
    """
    parser = argparse.ArgumentParser(prog="portsafe", description=DESCRIPTION,
                                     epilog=EXIT_CODES, formatter_class=_FMT)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, build in _BUILDERS.items():
        build(verbs.add_parser(verb, help=_HELP[verb], formatter_class=_FMT,
                               epilog=EXIT_CODES))
    return parser
