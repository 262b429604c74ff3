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

    floor = ("6 system calls: the lock directory's check, lock, socket, bind, close, unlock "
             "(find_unused_port makes 14, a resolver lookup of 'localhost' among them); "
             "bench/bench_floor.py measures them alone, and a near-ideal Python version")
    ours, fup = pair(default, find_unused_port)
    figures = [figure("default_vs_fup", "reserve_port()+release() p50", FUP,
                      ratios(ours, fup), target=0.6, limit=floor,
                      absolute={"reserve_port()+release()": ours,
                                "find_unused_port()": fup})]
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
             lambda: portsafe.reserve_ports(3).release(), 1.5,
             ("one check, 4 system calls per port, one unlock over the span: 14 "
              "(bench/bench_floor.py)"),
             "reserve_ports(3)+release()")):
        ours, base = pair(call, find_unused_port)
        figures.append(figure(key, label, FUP, ratios(ours, base), target=target,
                              limit=limit, absolute={name: ours}))
    return figures


def held(samples: int, repeats: int, levels: tuple[int, ...]) -> list[dict]:
    """One more reservation with N already held, each level against find_unused_port.

    The figure is (reserve/find_unused_port at N) / (the same at 0): a yardstick in
    every level, so machine drift between levels does not read as a trend.
    """
    kept: list[portsafe.Reservation] = []
    per_level: dict[int, list[float]] = {}
    absolute: dict[int, list[float]] = {}
    try:
        for level in levels:
            while len(kept) < level:
                kept.append(portsafe.reserve_port())
            med = interleaved({"fup": find_unused_port,
                               "one": lambda: portsafe.reserve_port().release()},
                              samples, repeats)
            per_level[level] = ratios(med["one"], med["fup"])
            absolute[level] = med["one"]
    finally:
        for reservation in kept:
            reservation.release()
    base = per_level[levels[0]]
    return [figure(f"held_{level}", f"one more reservation with {level:,} held",
                   f"the same with 0 held (each vs {FUP})", ratios(per_level[level], base),
                   target=1.3, limit="flat by design: sharded lock lists (<= 256 "
                   "entries) and a dict of held ports",
                   absolute={f"{level:,} held": absolute[level]})
            for level in levels[1:]]
