"""``portsafe serve``: a port server speaking portpicker's protocol
(:mod:`portsafe._services.portserver`), run until SIGTERM.
"""

from __future__ import annotations

from portsafe._cli.exits import EXIT_ERROR, EXIT_OK, error

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    import argparse

__all__ = ["serve_verb"]


def serve_verb(args: argparse.Namespace) -> int:
    """``portsafe serve``: a port server speaking portpicker's protocol.

    Example:
        >>> import argparse  # see tests/cli/test_cli.py::TestServeVerb
    """
    from portsafe._services.portserver import serve
    from portsafe._unixsock import ServerAddressInUseError

    ports = range(args.range[0], args.range[1] + 1) if args.range else None
    try:
        serve(args.address, ports=ports, verbose=args.verbose)
    except ServerAddressInUseError as exc:
        error(str(exc.strerror))
        return EXIT_ERROR
    return EXIT_OK

