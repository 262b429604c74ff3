"""In-process figures: latency of each kind of call, against find_unused_port."""

from __future__ import annotations

import socket

from _stats import figure, interleaved, ratios
from _yardsticks import find_unused_port

import portsafe

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

FUP = "CPython's find_unused_port()"


def _portpicker() -> object | None:
    try:
        import portpicker
    except ImportError:
        return None
    return portpicker


def latency(samples: int, repeats: int) -> list[dict]:
    """reserve_port()+release() and its variants, each against its yardstick.

    Each figure has its own interleaved run of just the two calls it compares: with
    more calls in one run, whichever follows another pays for the caches that one
    left cold, and the figures came to depend on which calls shared the run.
    """
    def default() -> None:
        portsafe.reserve_port().release()

    def pair(call: Callable[[], object], yardstick: Callable[[], object]) -> tuple[
            list[float], list[float]]:
        med = interleaved({"call": call, "yardstick": yardstick}, samples, repeats)
        return med["call"], med["yardstick"]

    floor = ("6 system calls: socket and bind of the name, socket, bind and close of the "
             "check, close of the name (find_unused_port makes 14, a resolver lookup of "
             "'localhost' among them)")
    ours, fup = pair(default, find_unused_port)
    figures = [figure("default_vs_fup", "reserve_port()+release() p50", FUP,
                      ratios(ours, fup), target=0.7, limit=floor,
                      absolute={"reserve_port()+release()": ours,
                                "find_unused_port()": fup})]
    floor_one, floor_three = _floors()
    if floor_one is not None and floor_three is not None:
        ours, base = pair(default, floor_one)
        figures.append(figure("default_vs_floor", "reserve_port()+release() p50, vs its "
                              "system calls", "the same system calls from C", ratios(ours, base),
                              target=1.3, limit="the Python around the calls",
                              absolute={"system calls from C": base}))
        ours, base = pair(lambda: portsafe.reserve_ports(3).release(), floor_three)
        figures.append(figure("three_vs_floor", "reserve_ports(3)+release() p50, vs its "
                              "system calls", "the same system calls from C", ratios(ours, base),
                              target=1.3, limit="the Python around the calls",
                              absolute={"system calls from C (3 ports)": base}))
    picker = _portpicker()
    if picker is not None:
        remembered = picker._random_ports  # type: ignore[attr-defined]

        def pick() -> None:
            # portpicker never hands out a port twice per process: after ~28,000 picks
            # it has none left. Forgetting each one keeps its work (two binds) the same.
            remembered.discard(picker.pick_unused_port())  # type: ignore[attr-defined]

        ours, theirs = pair(default, pick)
        figures.append(figure(
            "default_vs_portpicker", "reserve_port()+release() p50, vs portpicker",
            "portpicker.pick_unused_port()", ratios(ours, theirs),
            limit="portpicker binds TCP and UDP and may retry: its own cost dominates",
            absolute={"portpicker.pick_unused_port()": theirs}))
    for key, label, call, target, limit, name in (
            ("range300_vs_default", "reserve_port(ports=range(30000, 30300)) p50",
             lambda: portsafe.reserve_port(ports=range(30000, 30300)).release(), 1.2,
             "a range is its own cache key: one dict lookup, then the same walk",
             "ports=range(30000, 30300)"),
            ("range10000_vs_default", "reserve_port(ports=range(20000, 30000)) p50",
             lambda: portsafe.reserve_port(ports=range(20000, 30000)).release(), 1.2,
             "as above", "ports=range(20000, 30000)")):
        ours, base = pair(call, default)
        figures.append(figure(key, label, "reserve_port() (default) p50", ratios(ours, base),
                              target=target, limit=limit, absolute={name: ours}))
    for key, label, call, target, limit, name in (
            ("unspec_vs_fup", "reserve_port(family=AF_UNSPEC, socktype=0) p50",
             lambda: portsafe.reserve_port(family=socket.AF_UNSPEC, socktype=0).release(),
             1.0, ("two dual-stack binds (TCP, UDP), each with its IPV6_V6ONLY=0: 11 system "
                   "calls (bench/bench_floor.py)"),
             "AF_UNSPEC, socktype=0"),
            ("three_vs_fup", "reserve_ports(3)+release() p50",
             lambda: portsafe.reserve_ports(3).release(), None,
             "6 system calls per port: its target is the figure against them",
             "reserve_ports(3)+release()")):
        ours, base = pair(call, find_unused_port)
        figures.append(figure(key, label, FUP, ratios(ours, base), target=target,
                              limit=limit, absolute={name: ours}))
    return figures


def _floors() -> tuple[Callable[[], object] | None, Callable[[], object] | None]:
    """One and three ports' system calls made from C, as portsafe makes them: the name
    claimed with its bind check (``_speedups.claim_name``) and closed."""
    try:
        from portsafe._core import probe as _probe
        from portsafe._locking import files as _locks
        from portsafe._locking.names import compile_claim
    except ImportError:
        return None, None
    if not _locks.table().passes_descriptors:
        return None, None
    run, plan = compile_claim(_probe.targets(None, socket.AF_INET, socket.SOCK_STREAM).steps)
    import os
    import random

    ports = random.Random(7).sample(range(25000, 30000), 1000)
    close = os.close
    state = [0]

    def one() -> None:
        index = state[0] = (state[0] + 1) % 1000
        code = run(ports[index], plan, 0)
        if not code & 15:
            close(code >> 8)

    def three() -> None:
        index = state[0] = (state[0] + 3) % 996
        codes = [run(ports[index + k], plan, 0) for k in range(3)]
        for code in codes:
            if not code & 15:
                close(code >> 8)

    return one, three


def held(samples: int, repeats: int, levels: tuple[int, ...],
         elsewhere: bool = False) -> list[dict]:
    """One more reservation with N already held, each level against find_unused_port.

    The figure is (reserve/find_unused_port at N) / (the same at 0): a yardstick in
    every level, so machine drift between levels does not read as a trend. With
    *elsewhere*, another process holds the N (the kernel's table of names is per
    network namespace, not per process).
    """
    import subprocess
    import sys

    kept: list[portsafe.Reservation] = []
    per_level: dict[int, list[float]] = {}
    absolute: dict[int, list[float]] = {}
    other: subprocess.Popen[str] | None = None
    try:
        for level in levels:
            if elsewhere:
                if other is not None:
                    other.communicate("")
                code = ("import portsafe, sys; g = [portsafe.reserve_port()"
                        f" for _ in range({level})]; print('ready', flush=True); "
                        "sys.stdin.read()")
                other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
                assert other.stdout is not None
                assert other.stdout.readline().strip() == "ready"
            while not elsewhere and len(kept) < level:
                kept.append(portsafe.reserve_port())
            med = interleaved({"fup": find_unused_port,
                               "one": lambda: portsafe.reserve_port().release()},
                              samples, repeats)
            per_level[level] = ratios(med["one"], med["fup"])
            absolute[level] = med["one"]
    finally:
        for reservation in kept:
            reservation.release()
        if other is not None:
            other.communicate("")
    base = per_level[levels[0]]
    where = " by another process" if elsewhere else ""
    return [figure(f"held_{level}{'_elsewhere' if elsewhere else ''}",
                   f"one more reservation with {level:,} held{where}",
                   f"the same with 0 held (each vs {FUP})", ratios(per_level[level], base),
                   target=1.3 if level <= 1000 else 2.5,
                   limit="the kernel hashes a namespace's abstract names into 256 buckets: "
                   "about N/256 names share a bucket",
                   absolute={f"{level:,} held": absolute[level]})
            for level in levels[1:]]
