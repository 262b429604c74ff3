"""``portsafe doctor``: check what portsafe relies on, and say what to do about it.

Each check is a plain function returning a :class:`~portsafe._cli.checks.CheckResult`
(name, ok, detail, advice). What a reservation relies on depends on the lock system this
process uses (``_platform``): on Linux the ports' names (:mod:`.doctor_names`: they
bind, they exclude, they can be read), elsewhere the lock directory
(:mod:`.doctor_lockdir`, :mod:`.doctor_locks`); the ranges, keeper, port-server and C
module checks (:mod:`.doctor_common`) run on both. :data:`CHECKS` lists the checks of
this process's lock system, in the order they run; ``portsafe doctor`` exits 0 only if
every one is ok.
"""

from __future__ import annotations

import dataclasses

from portsafe import _platform as backend
from portsafe._cli.checks import CheckResult
from portsafe._cli.doctor_common import (
    check_candidates,
    check_ephemeral,
    check_keeper,
    check_port_server,
    check_reserved,
    check_speedups,
)
from portsafe._cli.doctor_lockdir import (
    check_files,
    check_format,
    check_path,
    check_setting,
    check_tmp_cleaner,
    check_trust,
)
from portsafe._cli.doctor_locks import check_record_locks
from portsafe._cli.doctor_names import check_names, check_names_held
from portsafe._cli.exits import EXIT_NOT_FOUND, EXIT_OK

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

__all__ = ["CHECKS", "FILE_CHECKS", "NAME_CHECKS", "doctor_verb", "run_checks"]

_COMMON: tuple[Callable[[str | None], CheckResult], ...] = (
    check_ephemeral, check_reserved, check_candidates, check_keeper, check_port_server,
    check_speedups,
)
#: The checks where reservations are lock files (macOS, the BSDs, Windows).
FILE_CHECKS: tuple[Callable[[str | None], CheckResult], ...] = (
    check_setting, check_path, check_trust, check_format, check_files, check_tmp_cleaner,
    check_record_locks, *_COMMON,
)
#: The checks where reservations are names (Linux): no lock directory to look at.
NAME_CHECKS: tuple[Callable[[str | None], CheckResult], ...] = (
    check_names, check_names_held, *_COMMON,
)
#: The checks ``portsafe doctor`` runs here, in order: those of this process's lock system.
CHECKS = NAME_CHECKS if backend.NAMES else FILE_CHECKS


def run_checks(path: str | None = None) -> list[CheckResult]:
    """Run every check in :data:`CHECKS`; a check that crashes is reported, not raised.

    Args:
        path: The lock directory to check (default: the one in use), for the lock-file
            checks; the names checks have no directory and ignore it.

    Returns:
        One result per check, in order.

    Example:
        >>> all(isinstance(r, CheckResult) for r in run_checks("/nonexistent/x"))
        True
    """
    results: list[CheckResult] = []
    for check in CHECKS:
        if check is not check_setting and results and not results[0].ok and path is None:
            lock_checks = check.__name__ in ("check_path", "check_trust", "check_format",
                                             "check_files",
                                             "check_tmp_cleaner", "check_record_locks")
            if lock_checks:
                continue  # no usable directory to look at
        try:
            results.append(check(path))
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the rest
            label = check.__name__.removeprefix("check_")
            results.append(CheckResult(label, False, f"the check failed: "
                                       f"{type(exc).__name__}: {exc}", "report this bug"))
    return results


def doctor_verb(args: argparse.Namespace) -> int:
    """``portsafe doctor``: print each check (``--json``: as data); exit 0 if all ok.

    Example:
        >>> import argparse
        >>> doctor_verb(argparse.Namespace(json=True))  # doctest: +SKIP
        0
    """
    results = run_checks()
    healthy = all(r.ok for r in results)
    if args.json:
        import json

        print(json.dumps({"ok": healthy, "checks": [dataclasses.asdict(r) for r in results]},
                         indent=2))
    else:
        for r in results:
            print(f"{'ok  ' if r.ok else 'FAIL'}  {r.name}: {r.detail}")
            if r.advice:
                print(f"      -> {r.advice}")
        print("all is well" if healthy else
              f"{sum(not r.ok for r in results)} problem(s) found")
    return EXIT_OK if healthy else EXIT_NOT_FOUND

