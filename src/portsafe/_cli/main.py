"""The ``portsafe`` command line: ports for shell scripts, Makefiles and CI steps.

This module reads the command line and hands it to the verb's module, imported only
when that verb runs: ``PORT=$(portsafe)`` loads :mod:`portsafe._cli.reserve` and the
keeper's client, no argparse; every other verb builds only its own parser
(:mod:`portsafe._cli.parsers`), so ``portsafe --help`` stays fast and works even if some
part of the library is broken.
"""

from __future__ import annotations

import os
import sys

from portsafe._cli.exits import (
    EXIT_ERROR,
    EXIT_NO_FREE_PORT,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    error,
    no_free_port_message,
)

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

__all__ = ["VERBS", "dispatch", "main"]

VERBS = ("reserve", "release", "run", "list", "who", "ranges", "doctor", "serve")


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
        if args:
            code = _main(args)
        else:
            from portsafe._cli.reserve import bare

            code = bare()
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


def _verb_function(verb: str) -> Callable[[argparse.Namespace], int]:  # noqa: PLR0911
    """The function that runs *verb*, importing its module now (one return per verb).

    Plain imports, not a table of names, so that mypy checks each one.
    """
    if verb == "reserve":
        from portsafe._cli.reserve import reserve_verb

        return reserve_verb
    if verb == "release":
        from portsafe._cli.reserve import release_verb

        return release_verb
    if verb == "run":
        from portsafe._cli.run import run_verb

        return run_verb
    if verb == "list":
        from portsafe._cli.show import list_verb

        return list_verb
    if verb == "who":
        from portsafe._cli.show import who_verb

        return who_verb
    if verb == "ranges":
        from portsafe._cli.ranges import ranges_verb

        return ranges_verb
    if verb == "doctor":
        from portsafe._cli.doctor import doctor_verb

        return doctor_verb
    if verb == "serve":
        from portsafe._cli.serve import serve_verb

        return serve_verb
    raise UsageError(f"unknown verb {verb!r}")


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
