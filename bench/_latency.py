"""In-process figures: latency of each kind of call, against find_unused_port."""

from __future__ import annotations

import socket

from _stats import figure, interleaved, ratios
from _yardsticks import find_unused_port

import portsafe

FUP = "CPython's find_unused_port()"


def _portpicker() -> object | None:
    try:
        import portpicker
    except ImportError:
        return None
    return portpicker


def latency(samples: int, repeats: int) -> list[dict]:
    """reserve_port()+release() and its variants, each against find_unused_port."""
    calls = {
        "find_unused_port": find_unused_port,
        "default": lambda: portsafe.reserve_port().release(),
        "range300": lambda: portsafe.reserve_port(ports=range(30000, 30300)).release(),
        "range10000": lambda: portsafe.reserve_port(ports=range(20000, 30000)).release(),
        "unspec": lambda: portsafe.reserve_port(family=socket.AF_UNSPEC,
                                                socktype=0).release(),
        "three": lambda: portsafe.reserve_ports(3).release(),
    }
    picker = _portpicker()
    if picker is not None:
        calls["portpicker"] = picker.pick_unused_port  # type: ignore[attr-defined]
    med = interleaved(calls, samples, repeats)
    fup = med["find_unused_port"]
    floor = ("the kernel's floor: lock, socket, bind, close, unlock (5 system calls, "
             "about half of find_unused_port's 6 plus a resolver call for 'localhost')")
    figures = [
        figure("default_vs_fup", "reserve_port()+release() p50", FUP,
               ratios(med["default"], fup), target=0.6, limit=floor,
               absolute={"reserve_port()+release()": med["default"],
                         "find_unused_port()": fup}),
    ]
    if picker is not None:
        figures.append(figure(
            "default_vs_portpicker", "reserve_port()+release() p50, vs portpicker",
            "portpicker.pick_unused_port()", ratios(med["default"], med["portpicker"]),
            limit="portpicker binds TCP and UDP and may retry: its own cost dominates",
            absolute={"portpicker.pick_unused_port()": med["portpicker"]}))
    figures += [
        figure("range300_vs_default", "reserve_port(ports=range(30000, 30300)) p50",
               "reserve_port() (default) p50", ratios(med["range300"], med["default"]),
               target=1.2, limit="one cached dict lookup more than the default; the "
               "same lock+probe floor",
               absolute={"ports=range(30000, 30300)": med["range300"]}),
        figure("range10000_vs_default", "reserve_port(ports=range(20000, 30000)) p50",
               "reserve_port() (default) p50", ratios(med["range10000"], med["default"]),
               target=1.2, limit="as above: a range is its own cache key",
               absolute={"ports=range(20000, 30000)": med["range10000"]}),
        figure("unspec_vs_fup", "reserve_port(family=AF_UNSPEC, socktype=0) p50", FUP,
               ratios(med["unspec"], fup), target=1.0,
               limit="two dual-stack binds (TCP, UDP): 10 system calls",
               absolute={"AF_UNSPEC, socktype=0": med["unspec"]}),
        figure("three_vs_fup", "reserve_ports(3)+release() p50", FUP,
               ratios(med["three"], fup), target=1.5,
               limit="three times the single-port floor (15 system calls)",
               absolute={"reserve_ports(3)+release()": med["three"]}),
    ]
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
