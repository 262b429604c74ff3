"""The pytest side of auto mode: the one switch, and the terminal summary.

Auto mode itself (bind(0) interception, leases, fallbacks) is :mod:`portsafe._auto.switch`'s;
the plugin turns it on for a run and reports what it did. Plain functions here, so the
decision and the report are testable without a pytest run:

* :func:`decide` reads the switch: ``--portsafe-auto``, ini ``portsafe_auto = true`` or
  ``PORTSAFE_AUTO=1`` turn it on (``--portsafe-patch-asyncio`` and ini
  ``portsafe_patch_asyncio``, the older names, are aliases); ``PORTSAFE_AUTO=0`` turns it
  off whatever the command line or ini file say, so a run can opt out of an ``addopts``.
* :func:`merge_stats` sums the per-process ``stats()`` of the controller and every xdist
  worker; :func:`summary_lines` words the terminal summary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["OFF_SOURCE", "decide", "header_lines", "merge_stats", "summary_lines"]

#: What :func:`decide` names when ``PORTSAFE_AUTO=0`` turned auto mode off.
OFF_SOURCE = "PORTSAFE_AUTO=0"
_MAX_REASONS = 5  # distinct fallback reasons shown; the rest are counted
_MAX_UNCOVERED = 20  # places of uncovered pickers shown; the rest are counted


def decide(
    *, flag: bool, alias_flag: bool, ini: bool, alias_ini: bool, env: bool | None
) -> tuple[bool, str]:
    """Whether this run uses auto mode, and which setting decided.

    Args:
        flag: ``--portsafe-auto`` was given.
        alias_flag: ``--portsafe-patch-asyncio`` was given.
        ini: ini ``portsafe_auto`` is true.
        alias_ini: ini ``portsafe_patch_asyncio`` is true.
        env: ``portsafe._settings.auto_mode()``: True, False (explicitly off) or None.

    Returns:
        ``(on, source)``; *source* is ``""`` when nothing asked for auto mode.

    Example:
        >>> decide(flag=True, alias_flag=False, ini=False, alias_ini=False, env=None)
        (True, '--portsafe-auto')
        >>> decide(flag=True, alias_flag=False, ini=True, alias_ini=False, env=False)
        (False, 'PORTSAFE_AUTO=0')
    """
    if env is False:
        return False, OFF_SOURCE
    for asked, source in (
        (flag, "--portsafe-auto"),
        (alias_flag, "--portsafe-patch-asyncio"),
        (ini, "ini portsafe_auto"),
        (alias_ini, "ini portsafe_patch_asyncio"),
        (bool(env), "PORTSAFE_AUTO=1"),
    ):
        if asked:
            return True, source
    return False, ""


def merge_stats(per_process: Iterable[Mapping[str, object]]) -> dict[str, object]:
    """Sum auto mode's ``stats()`` of several processes (the controller, xdist workers).

    Args:
        per_process: One mapping per process, with the keys of ``portsafe._auto.switch.stats()``
            (``reserved``, ``fallbacks``, ``fallback_reasons``, ``leases_held``) and the
            plugin's ``fixtures`` (ports its pytest-asyncio replacements gave). Missing
            keys count as zero.

    Returns:
        The sums, the concatenated reasons, and ``processes``: how many were merged.

    Example:
        >>> merged = merge_stats([{"reserved": 2, "fallbacks": 0},
        ...                       {"reserved": 3, "fallbacks": 1, "fallback_reasons": ["x"]}])
        >>> merged["reserved"], merged["fallbacks"], merged["fallback_reasons"], merged["processes"]
        (5, 1, ['x'], 2)
    """
    totals: dict[str, int] = {"reserved": 0, "fallbacks": 0, "leases_held": 0, "fixtures": 0,
                              "probes_leased": 0, "refused_by_lease": 0}
    reasons: list[str] = []
    uncovered: dict[tuple[str, str], int] = {}
    processes = 0
    for stats in per_process:
        processes += 1
        for key in totals:
            value = stats.get(key, 0)
            totals[key] += value if isinstance(value, int) else 0
        more = stats.get("fallback_reasons", ())
        if isinstance(more, (list, tuple)):
            reasons.extend(str(reason) for reason in more)
        seen = stats.get("uncovered", ())
        for item in seen if isinstance(seen, (list, tuple)) else ():
            if isinstance(item, dict):
                place = (str(item.get("what", "")), str(item.get("where", "")))
                count = item.get("count", 1)
                uncovered[place] = (uncovered.get(place, 0)
                                    + (count if isinstance(count, int) else 1))
    return {**totals, "fallback_reasons": reasons, "processes": processes,
            "uncovered": [{"what": what, "where": where, "count": count}
                          for (what, where), count in uncovered.items()]}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def summary_lines(source: str, merged: Mapping[str, object], *, workers: int) -> list[str]:
    """The terminal summary's lines about auto mode.

    Args:
        source: What turned auto mode on (from :func:`decide`).
        merged: :func:`merge_stats`'s result.
        workers: How many xdist workers reported (0 without xdist).

    Returns:
        The lines, without the section rule: the count, the explicit-port probes covered,
        each picker seen and not covered (``file:line``, what it was, what to do
        instead), then each distinct reason a bind fell back to the kernel's pick.

    Example:
        >>> merged = merge_stats([{"reserved": 41, "fixtures": 1}])
        >>> print(*summary_lines("--portsafe-auto", merged, workers=2))
        ... # doctest: +NORMALIZE_WHITESPACE
        auto mode was on (--portsafe-auto): 42 ports reserved (41 by binds and known
        pickers, 1 by pytest-asyncio fixtures), summed over 2 xdist workers; 0 fallbacks
    """
    def count(key: str) -> int:
        value = merged.get(key, 0)
        return value if isinstance(value, int) else 0

    binds, fixtures, fallbacks = count("reserved"), count("fixtures"), count("fallbacks")
    where = f", summed over {_plural(workers, 'xdist worker')}" if workers else ""
    split = (f" ({binds} by binds and known pickers, {fixtures} by pytest-asyncio "
             "fixtures)" if fixtures else "")
    seen = merged.get("uncovered", [])
    uncovered = [item for item in (seen if isinstance(seen, list) else [])
                 if isinstance(item, dict)]
    lines = [
        (f"auto mode was on ({source}): {_plural(binds + fixtures, 'port')} reserved"
         f"{split}{where}; {_plural(fallbacks, 'fallback')}"
         + (f"; {_plural(len(uncovered), 'uncovered picker')} (below)" if uncovered else ""))
    ]
    leased, refused = count("probes_leased"), count("refused_by_lease")
    if leased or refused:
        lines.append(
            f"explicit-port probes covered: {_plural(leased, 'probe')} leased to its family, "
            f"{_plural(refused, 'bind')} refused because another family's probe held the "
            "port")
    if uncovered:
        lines.append("port pickers auto mode saw and could not cover (not race-free):")
        lines.extend(f"  - {item.get('where')}: {item.get('what')} "
                     f"({_plural(int(item.get('count', 1)), 'time')})"
                     for item in uncovered[:_MAX_UNCOVERED])
        if len(uncovered) > _MAX_UNCOVERED:
            lines.append(f"  ... and {len(uncovered) - _MAX_UNCOVERED} other places")
    if fallbacks:
        lines.append(
            f"{_plural(fallbacks, 'bind')} to port 0 fell back to the kernel's pick (no "
            "reservation, so not race-free):"
        )
        reasons = merged.get("fallback_reasons", [])
        # each process reports its distinct reasons; the same one from two workers is one
        distinct = list(dict.fromkeys(reasons if isinstance(reasons, list) else []))
        lines.extend(f"  - {reason}" for reason in distinct[:_MAX_REASONS])
        if len(distinct) > _MAX_REASONS:
            lines.append(f"  ... and {len(distinct) - _MAX_REASONS} other reasons")
    return lines


def header_lines(source: str, *, hook_installed: bool) -> list[str]:
    """The report-header lines saying auto mode starts (and where it cannot reach).

    Example:
        >>> header_lines("PORTSAFE_AUTO=1", hook_installed=True)
        ['portsafe: auto mode on (PORTSAFE_AUTO=1): binds to port 0 get reserved ports']
    """
    lines = [f"portsafe: auto mode on ({source}): binds to port 0 get reserved ports"]
    if not hook_installed:
        lines.append(
            "portsafe: the start-up hook (portsafe's .pth file) is not installed, so "
            "processes the tests start do not get auto mode (an editable install leaves "
            "it out): install portsafe without -e to cover them"
        )
    return lines
