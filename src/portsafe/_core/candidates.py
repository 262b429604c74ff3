"""The candidate set: which ports a walk visits, shard by shard, in what order.

Kept apart from :mod:`portsafe._core.ranges` (which asks the OS what the candidates are):
this is a pure data structure. A set is sorted, disjoint inclusive *spans* less a few
single ports (*skip*), grouped by lock shard (``port >> SHARD_BITS``); a shard's list
of ports is built the first time a walk reaches it. The first reservation of a process
therefore builds one shard of 256 ports, not all 36,000 candidates.
"""

from __future__ import annotations

import math
from bisect import bisect_right

from portsafe._locking.fileformat import SHARD_BITS

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Iterable, Iterator

__all__ = ["CandidateSet", "collapse", "describe", "random_stride", "spans_of", "subtract"]

_SHARD_SIZE = 1 << SHARD_BITS


def random_stride(random_: Callable[[], float], count: int) -> int:
    """A stride coprime to *count*, uniformly at random among them: a power of two takes
    a random odd number; anything else draws until one is coprime (two draws on average
    for a shard, instead of a table of every coprime made on the first walk: that was
    hundreds of ``gcd`` calls in the first reservation of every process).

    Example:
        >>> import random
        >>> rng = random.Random(1)
        >>> all(math.gcd(random_stride(rng.random, n), n) == 1 for n in range(1, 300))
        True
    """
    if count < 3:
        return 1
    if count & (count - 1) == 0:
        return int(random_() * (count >> 1)) * 2 + 1
    while True:
        step = 1 + int(random_() * (count - 1))
        if math.gcd(step, count) == 1:
            return step


class CandidateSet:
    """Ports to try, grouped by lock shard (``port >> SHARD_BITS``), built lazily.

    The set is kept as sorted, disjoint inclusive *spans* less a few single ports
    (*skip*: services, development-server ports). A shard's list of ports is built the
    first time a walk reaches it, so the first reservation of a process builds one
    shard of 256 ports, not the whole set.
    """

    __slots__ = ("_built", "_count", "_highs", "_keys", "_lows", "_skip", "description",
                 "fallback", "shard_keys")

    def __init__(self, ports: Iterable[int] | None, description: str, fallback: str = "",
                 *, spans: list[tuple[int, int]] | None = None,
                 skip: frozenset[int] = frozenset()) -> None:
        spans = _merge(spans_of(ports if ports is not None else ()) if spans is None
                       else spans)
        self._lows = [low for low, _ in spans]
        self._highs = [high for _, high in spans]
        # dict.fromkeys: two spans may share a shard, which must be walked once
        #: the shards the spans touch, as dict keys (``key in shard_keys``)
        self.shard_keys = dict.fromkeys(key for low, high in spans
                                     for key in range(low >> SHARD_BITS,
                                                      (high >> SHARD_BITS) + 1))
        self._keys = list(self.shard_keys)
        self._skip = skip
        self._built: dict[int, list[int]] = {}
        self._count: int | None = None
        self.description = description
        self.fallback = fallback

    def shard(self, key: int) -> list[int]:
        """The candidate ports of shard *key*, ascending (empty if it has none).

        Example:
            >>> CandidateSet(range(250, 260), "example").shard(1)
            [256, 257, 258, 259]
        """
        items = self._built.get(key)
        if items is None:
            base = key << SHARD_BITS
            top = base + _SHARD_SIZE - 1
            lows, highs, skip = self._lows, self._highs, self._skip
            items = []
            index = bisect_right(lows, top) - 1
            while index >= 0 and highs[index] >= base:
                items[:0] = [port for port in range(max(lows[index], base),
                                                    min(highs[index], top) + 1)
                             if port not in skip]
                index -= 1
            self._built[key] = items  # a race builds the same list twice: harmless
        return items

    @property
    def shards(self) -> dict[int, list[int]]:
        """Every non-empty shard's ports, by shard key (builds them all: not for hot paths)."""
        return {key: items for key in self._keys if (items := self.shard(key))}

    @property
    def count(self) -> int:
        """How many candidates there are (counted once, without building the shards).

        Example:
            >>> CandidateSet(range(1000, 1100), "example", skip=frozenset({1010})).count
            99
        """
        if self._count is None:
            total = sum(high - low + 1 for low, high in zip(self._lows, self._highs, strict=True))
            self._count = total - sum(1 for port in self._skip if self._spanned(port))
        return self._count

    def _spanned(self, port: int) -> bool:
        index = bisect_right(self._lows, port) - 1
        return index >= 0 and self._highs[index] >= port

    def __contains__(self, port: object) -> bool:
        return type(port) is int and port not in self._skip and self._spanned(port)

    def order(self, rng: random.Random, home: int | None,
              excluded: frozenset[int] = frozenset()) -> Iterator[int]:
        """Every candidate not *excluded* once, in random order, shard *home* first.

        Random (two processes scanning from the same start would collide), but shard by
        shard, so a process keeps using the lock file it already has open. Each shard is
        walked from a random start with a random stride coprime to its size: a full,
        repetition-free permutation that costs two random numbers.
        """
        random_ = rng.random
        if home in self.shard_keys:
            yield from self._walk(random_, home, excluded)
        for key in self.rest(rng, home):
            yield from self._walk(random_, key, excluded)

    def _walk(self, random_: Callable[[], float], key: int,
              excluded: frozenset[int]) -> Iterator[int]:
        items = self.shard(key)
        count = len(items)
        if count:
            index = int(random_() * count)
            stride = random_stride(random_, count)
            for _ in range(count):
                port = items[index]
                if port not in excluded:
                    yield port
                index = (index + stride) % count

    def walk(self, rng: random.Random, key: int) -> tuple[list[int], int, int]:
        """One shard's walk as (ports, start index, stride), for a caller's own loop.

        Visiting ``ports[(start + i * stride) % len(ports)]`` for ``i`` in
        ``range(len(ports))`` is the walk :meth:`order` makes of that shard.
        """
        items = self._built.get(key)
        if items is None:
            items = self.shard(key)
        count = len(items)
        random_ = rng.random
        return items, int(random_() * count), random_stride(random_, count)

    def rest(self, rng: random.Random, home: int | None) -> Iterator[int]:
        """The shard keys other than *home*, in a random order (start and coprime stride)."""
        random_ = rng.random
        keys = self._keys
        total = len(keys)
        index = int(random_() * total)
        stride = random_stride(random_, total)
        for _ in range(total):
            if keys[index] != home:
                yield keys[index]
            index = (index + stride) % total


def spans_of(ports: Iterable[int]) -> list[tuple[int, int]]:
    if type(ports) is range and ports.step == 1:
        return [(ports.start, ports.stop - 1)] if ports else []
    return collapse(set(ports))


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


def subtract(spans: list[tuple[int, int]],
              holes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """*spans* less every (inclusive) range in *holes*; both sorted or not, result sorted."""
    result = sorted(spans)
    for cut_low, cut_high in holes:
        kept: list[tuple[int, int]] = []
        for low, high in result:
            if high < cut_low or low > cut_high:
                kept.append((low, high))
                continue
            if low < cut_low:
                kept.append((low, cut_low - 1))
            if high > cut_high:
                kept.append((cut_high + 1, high))
        result = kept
    return result


def describe(ranges: list[tuple[int, int]]) -> str:
    return ",".join(f"{low}-{high}" if low != high else str(low) for low, high in ranges)


def collapse(ports: Iterable[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for port in sorted(ports):
        if ranges and ranges[-1][1] == port - 1:
            ranges[-1] = (ranges[-1][0], port)
        else:
            ranges.append((port, port))
    return ranges
