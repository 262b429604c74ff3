"""One call's walk over the candidates: claim, and count why others were passed over.

The walk visits one shard at a time, the home shard first: the shard of this process's
last success, whose walk (a :class:`Cursor`) goes on from where the last call left off.
:meth:`Cursor.claim` is the one search loop of every reservation (``reserve_port`` and
``reserve_ports`` through :func:`take`, the rest through :meth:`Search.take`): each
candidate is claimed through ``table.try_claim(port, where, claim)``, tried at most once
per call (G5), and a failure says how many were held, in use, or refused for lack of
privilege (a :class:`Tally`)."""

from __future__ import annotations

import errno
import os
import random

from portsafe._core.probe import refusal
from portsafe._errors import LockDirError, NoFreePortError
from portsafe._locking import files as _locks

TYPE_CHECKING = False  # see portsafe/__init__.py
if TYPE_CHECKING:
    from portsafe._core import probe as _probe
    from portsafe._core.candidates import CandidateSet
    from portsafe._locking.files import Table
    from portsafe._locking.lockdir import LockDir
    from portsafe._locking.nametable import Namespace

__all__ = ["Cursor", "Search", "Tally", "rng", "take"]

rng = random.Random()  # noqa: S311 - spreading picks, not secrecy
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=rng.seed)  # siblings must not pick in lockstep

_DENIED = errno.EACCES  # a port below ip_unprivileged_port_start, without the privilege

# A walk that had to pass more than this many taken ports in a shard leaves it: the next
# call starts at a random shard.
_CROWDED = 32


class Cursor:
    """The walk of one shard in progress: its candidates ``ports``, visited from a random
    start with a random stride coprime to their number, so that going on with it visits
    every candidate of the shard before any twice (as a fresh random start per call
    would not), at no random numbers per call.

    The walk of this process's last success is kept (``_cursor``) for the next call to
    go on with: its shard is the home shard, whose lock file is open and whose kernel lock
    list is in the CPU's cache (a cold one cost more than the rest of a reservation with
    30,000 held).

    Example:
        >>> from portsafe._core import ranges as _ranges
        >>> cursor = Cursor("here", _ranges.explicit_candidates(range(30000, 30010)), 117)
        >>> walked = [cursor.step() for _ in range(cursor.count)]
        >>> sorted(walked) == list(range(30000, 30010)), cursor.step() == walked[0]
        (True, True)
    """

    __slots__ = ("candidates", "count", "index", "key", "ports", "stride", "where")

    def __init__(self, where: LockDir | Namespace, candidates: CandidateSet,
                 key: int) -> None:
        self.where = where  # the lock directory (or namespace) the walk claims in
        self.candidates = candidates
        self.key = key  # the shard
        self.ports, self.index, self.stride = candidates.walk(rng, key)
        self.count = len(self.ports)

    def step(self) -> int:
        """The next candidate of the walk, which moves past it."""
        port = self.ports[self.index]
        self.index = (self.index + self.stride) % self.count
        return port

    def claim(self, n: int, taken: list[int], search: Search | None,  # noqa: PLR0917
              table: Table, probes: _probe.Probes, excluded: frozenset[int]) -> Search | None:
        """The search loop: go once round this walk from where it is, claiming each
        candidate not *excluded* through ``table.try_claim`` and adding what it gets to
        *taken*, until it holds *n*; the walk then stops after the last one got, and is
        kept for the next call (unless it passed more than _CROWDED taken ports: the next
        call starts elsewhere). Returns *search*, the Search that counts why the others
        were passed over: made at the first one when *search* is None (the hot path
        makes none while every candidate it tries is free).

        Positional arguments, as in :func:`take`: this is the hot path, where keywords
        cost more.
        """
        global _cursor
        ports = self.ports  # few locals: setting them up costs more than one claim's
        count = self.count  # Python (a bound method made is slower than a method called)
        index = self.index
        passed = 0  # candidates of this shard not free
        left = count
        while left:
            left -= 1
            port = ports[index]
            index = (index + self.stride) % count
            if port in excluded:
                continue
            code = table.try_claim(port, self.where, probes.claim)
            if code:  # nothing held: why not?
                if search is None:
                    search = Search(self.candidates, probes, excluded, self.where, table)
                    search.attempts = len(taken)
                search.passed(code)
                passed += 1
                continue
            taken.append(port)
            if search is not None:
                search.attempts += 1
            if len(taken) == n:
                self.index = index
                if passed:
                    _cursor = self if passed <= _CROWDED else None
                elif _cursor is not self:
                    _cursor = self
                return search
        return search


# The walk of this process's last success, to go on with (see Cursor); None before the
# first, and after a walk that found its shard crowded.
_cursor: Cursor | None = None


def _resume(candidates: CandidateSet, where: LockDir | Namespace) -> Cursor | None:
    """The home shard's walk for *candidates* in *where*: the last one, or a fresh one of
    the same shard for other candidates that have it; None when there is no home."""
    cursor = _cursor
    if cursor is None or cursor.where is not where:
        return None
    if cursor.candidates is candidates:
        return cursor
    return Cursor(where, candidates, cursor.key) if cursor.key in candidates.shard_keys \
        else None


class Tally:
    """How many candidates one call tried, and why those it did not get were passed over:
    held by a portsafe reservation (this process's included), in use, or refused for
    lack of privilege.

    Example:
        >>> from portsafe._core import probe as _probe
        >>> from portsafe._locking.claim import HELD
        >>> tally = Tally(_probe.targets(None, 2, 1).steps)
        >>> tally.passed(HELD)
        >>> tally.attempts, tally.held, tally.in_use, tally.denied
        (1, 1, 0, 0)
    """

    __slots__ = ("attempts", "denied", "held", "in_use", "steps")

    def __init__(self, steps: tuple[_probe.Step, ...]) -> None:
        self.steps = steps  # what the claim binds, to read its codes by
        self.attempts = self.held = self.in_use = self.denied = 0

    def passed(self, code: int) -> None:
        """Count one candidate tried and found not free, by its claim's *code*."""
        self.attempts += 1
        busy = refusal(code, self.steps)  # raises where no port could be free
        if busy < 0:
            self.held += 1
        elif busy == _DENIED:
            self.denied += 1
        else:
            self.in_use += 1


class Search(Tally):
    """One call's walk over the candidates, counting why each one was passed over.

    Example:
        >>> from portsafe._core import probe as _probe, ranges as _ranges
        >>> search = Search(_ranges.explicit_candidates(range(30000, 30010)),
        ...                 _probe.targets(None, 2, 1), frozenset(), _locks.table().current())
        >>> ports = search.take(2)
        >>> len(ports), search.attempts >= 2
        (2, True)
        >>> search.table.release_all(ports)
    """

    __slots__ = ("candidates", "claim", "directory", "excluded", "probes", "table")

    def __init__(self, candidates: CandidateSet, probes: _probe.Probes,
                 excluded: frozenset[int], directory: LockDir | Namespace,
                 table: Table | None = None) -> None:
        self.candidates = candidates
        self.probes = probes
        self.claim = probes.claim
        self.steps = probes.steps
        self.excluded = excluded
        self.table = table or _locks.table()
        self.directory = directory
        self.attempts = self.held = self.in_use = self.denied = 0

    def take(self, n: int, taken: list[int] | None = None,
             walked: int | None = None) -> list[int]:
        """Claim up to *n* ports into *taken*, in walk order: the home shard's walk first,
        going on from where the last call left off, then the other shards in a random
        order. Each candidate is tried at most once (G5); what is returned is held,
        nothing else. *walked*: the home shard :func:`take` already went round.
        """
        if taken is None:
            taken = []
        candidates, directory, table = self.candidates, self.directory, self.table
        probes, excluded = self.probes, self.excluded
        try:
            home = walked
            if walked is None:
                cursor = _resume(candidates, directory)
                if cursor is not None:
                    cursor.claim(n, taken, self, table, probes, excluded)
                    if len(taken) == n:
                        return taken
                    home = cursor.key
            for key in candidates.rest(rng, home):
                Cursor(directory, candidates, key).claim(n, taken, self, table, probes,
                                                         excluded)
                if len(taken) == n:
                    return taken
        except BaseException:
            table.release_all(taken)
            raise
        return taken

    def take_run(self, n: int) -> list[int]:
        """Claim *n* contiguous ports ``p .. p+n-1``, or nothing."""
        candidates, excluded, table = self.candidates, self.excluded, self.table
        for start in self.candidates.order(rng, None, excluded):
            run = range(start, start + n)
            if not all(port in candidates and port not in excluded for port in run):
                continue
            taken: list[int] = []
            try:
                for port in run:
                    code = table.try_claim(port, self.directory, self.claim)
                    if code:
                        self.passed(code)
                        break
                    self.attempts += 1
                    taken.append(port)
            except BaseException:
                table.release_all(taken)
                raise
            if len(taken) == n:
                return taken
            table.release_all(taken)
        return []

    def failure(self, wanted: str, found: int = 0) -> NoFreePortError | LockDirError:
        """The error for a walk that found too few: LockDirError when no candidate's
        lock file was usable, else NoFreePortError with the counts."""
        candidates = self.candidates
        # skipped (poisoned) lock files: raise LockDirError only if nothing was usable
        shards = candidates.shards
        unusable = self.table.unusable(self.directory, shards)
        if unusable and len(unusable) == len(shards):
            if TYPE_CHECKING:
                assert isinstance(self.directory, LockDir)
            return _locks.unusable_error(self.directory, unusable)
        partial = f", found only {found}" if found else ""
        excluded = len(self.excluded)
        where = ", ".join(sorted({f"{host}" for _, _, host, _ in self.probes}))
        denied = (f", {self.denied} refused by the OS for lack of privilege (ports below "
                  f"1024, or net.ipv4.ip_unprivileged_port_start on Linux, need root or "
                  f"CAP_NET_BIND_SERVICE: choose higher ports)") if self.denied else ""
        return NoFreePortError(
            f"no {wanted} among {candidates.count} candidate ports ({candidates.description}"
            f"{f', {excluded} excluded by exclude=' if excluded else ''}): tried "
            f"{self.attempts}{partial}, {self.held} held by portsafe reservations (this "
            f"process's included), "
            f"{self.in_use} in use on {where}{denied}. Release reservations you no longer "
            f"need, or widen the range (ports=..., PORTSAFE_RANGE)",
            attempts=self.attempts, candidates=candidates.count)

    def too_many(self, n: int, contiguous: bool) -> NoFreePortError:
        """*n* is more than there are candidates: fail before locking anything."""
        candidates = self.candidates
        return NoFreePortError(
            f"cannot reserve {n} {'contiguous ' if contiguous else ''}ports: there are only "
            f"{candidates.count} candidate ports ({candidates.description}); ask for fewer, "
            f"or widen the range (ports=..., PORTSAFE_RANGE)",
            attempts=0, candidates=candidates.count)


def take(n: int, candidates: CandidateSet, probes: _probe.Probes,  # noqa: PLR0917
         excluded: frozenset[int], directory: LockDir | Namespace,
         table: Table) -> tuple[list[int], Search | None]:
    """Claim *n* ports: ``reserve_port``'s and ``reserve_ports``' walk (:meth:`Search.take`,
    with no Search made while the home shard's next candidates are free).

    Returns the ports claimed and the Search that counted those passed over (None if
    none was): fewer than *n* ports (then the Search is there to raise its
    :meth:`~Search.failure`; the caller releases them) when every candidate was tried.

    Example:
        >>> from portsafe._core import probe as _probe, ranges as _ranges
        >>> t = _locks.table()
        >>> ports, search = take(2, _ranges.explicit_candidates(range(30000, 30010)),
        ...                      _probe.targets(None, 2, 1), frozenset(), t.current(), t)
        >>> len(ports)
        2
        >>> t.release_all(ports)
    """
    taken: list[int] = []
    cursor = _cursor
    if cursor is None or cursor.candidates is not candidates or cursor.where is not directory:
        cursor = _resume(candidates, directory)
        if cursor is None:  # no home shard: every shard at random
            fresh = Search(candidates, probes, excluded, directory, table)
            fresh.take(n, taken)
            return taken, fresh
    try:
        search = cursor.claim(n, taken, None, table, probes, excluded)
    except BaseException:
        table.release_all(taken)
        raise
    if len(taken) == n:
        return taken, search
    if search is None:
        search = Search(candidates, probes, excluded, directory, table)
        search.attempts = len(taken)
    search.take(n, taken, cursor.key)
    return taken, search
