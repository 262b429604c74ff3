"""Figures that need fresh processes: first call, N processes, collisions, imports, CLI."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _stats import figure, ratios

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_worker.py")


def _run_worker(*args: str) -> dict:
    out = subprocess.run([sys.executable, WORKER, *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.splitlines()[-1])


def first_reservation(per_repeat: int, repeats: int) -> list[dict]:
    """First reserve_port()+release() of a fresh process vs 100 plain binds in it."""
    import portsafe

    portsafe.reserve_port().release()  # the lock directory exists, as in a test run
    values: list[float] = []
    firsts: list[float] = []
    binds: list[float] = []
    for _ in range(repeats):
        pairs = [_run_worker("first", "binds-first" if i % 2 else "first-first")
                 for i in range(per_repeat)]
        first = statistics.median(p["first"] for p in pairs)
        bind = statistics.median(p["binds"] for p in pairs)
        values.append(first / bind)
        firsts.append(first)
        binds.append(bind)
    return [figure("first_vs_binds", "first reservation in a fresh process",
                   "100x socket()+bind(0)+close() in the same process", values,
                   target=1.0, limit="reading /proc and /etc/services, building one "
                   "shard's walk, the first name",
                   absolute={"first reserve_port()+release()": firsts,
                             "100 plain binds": binds})]


def _ready(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", f"a worker failed to start: {line!r}"


def _together(args: list[str], processes: int, seconds: float) -> list[dict]:
    """Start *processes* workers, let all of them run for the same *seconds* once every
    one is ready, and collect the JSON line each prints last."""
    procs = [subprocess.Popen([sys.executable, WORKER, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    for proc in procs:
        _ready(proc)
    end = time.time() + seconds
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{end}\n")
        proc.stdin.flush()
    return [json.loads(proc.communicate()[0].splitlines()[-1]) for proc in procs]


def _loop_run(processes: int, spec: str, seconds: float, directory: str) -> dict:
    results = _together(["loop", spec, directory], processes, seconds)
    return {"ops_per_s": sum(r["ops"] for r in results) / seconds,
            "dups": sum(r["dups"] for r in results),
            "nofree": sum(r["nofree"] for r in results)}


def _flock_files(directory: str) -> None:
    """One file per candidate port, made up front: creating them in the loop would be
    what the loop measures."""
    from portsafe._core import ranges as _ranges

    ports = {port for shard in _ranges.default_candidates().shards.values()
             for port in shard} | set(range(30000, 30300))
    for port in ports:
        os.close(os.open(os.path.join(directory, str(port)), os.O_CREAT | os.O_WRONLY, 0o600))


def throughput(counts: tuple[int, ...], seconds: float, repeats: int) -> list[dict]:
    """N processes reserving and releasing in a loop: throughput N=max vs N=min."""
    figures = []
    directory = tempfile.mkdtemp(prefix="portsafe-bench-flock-")
    try:
        _flock_files(directory)
        for spec, name in (("default", "default range"), ("30000:30300", "300-port range")):
            runs: dict[int, list[dict]] = {n: [] for n in counts}
            for _ in range(repeats):
                for n in counts:
                    runs[n].append(_loop_run(n, spec, seconds, directory))
            figures.append(_throughput_figure(spec, name, counts, runs))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return figures


def _throughput_figure(spec: str, name: str, counts: tuple[int, ...],
                       runs: dict[int, list[dict]]) -> dict:
    low, high = counts[0], counts[-1]
    rate = {n: [r["ops_per_s"] for r in runs[n]] for n in counts}
    dups = sum(r["dups"] for n in counts for r in runs[n])
    nofree = sum(r["nofree"] for n in counts for r in runs[n])
    item = figure(
        f"procs_{spec}", f"throughput N={high}/N={low} processes, {name}",
        f"the same loop with N={low}", ratios(rate[high], rate[low]),
        target=0.75, at_least=True,
        limit=f"{os.cpu_count()} cores: N>cores shares them; lock files are shared "
        f"by all. duplicates {dups} (independent flock), NoFreePortError {nofree}",
        absolute={f"ops/s N={n}": rate[n] for n in counts}, unit="ops/s")
    item["duplicates"] = dups
    item["no_free_port_errors"] = nofree
    item["label"] += f", {dups} dups, {nofree} NoFree"
    if dups or nofree:
        item["status"] = "MISS"
    return item


def collisions(processes: int, picks: int, seconds: float) -> dict:
    """Pick, wait U(0, 50 ms), bind+listen, under loopback load: EADDRINUSE per method."""
    methods = ["portsafe", "find_unused_port"]
    try:
        import portpicker  # noqa: F401
        methods.append("portpicker")
    except ImportError:
        pass
    found: dict[str, dict] = {}
    for method in methods:
        loads = [subprocess.Popen([sys.executable, WORKER, "load", str(seconds + 2)])
                 for _ in range(2)]
        try:
            results = _together(["collide", method, str(picks)], processes, seconds)
        finally:
            for proc in loads:
                proc.kill()
                proc.wait()
        found[method] = {"collisions": sum(r["collisions"] for r in results),
                         "picks": sum(r["picks"] for r in results)}
    return {"processes": processes, "methods": found,
            "load": "2 processes opening loopback connections every ~2 ms"}


def _importtime(statement: str) -> dict[str, int]:
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", statement],
                         capture_output=True, text=True, check=True).stderr
    found: dict[str, int] = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit():
            found[name.rstrip()] = int(cumulative)
    return found


def imports(runs: int) -> list[dict]:
    """Cumulative -X importtime of portsafe's modules, vs `import socket` in its own run."""
    ours: list[float] = []
    yard: list[float] = []
    for _ in range(runs):
        base = _importtime("import socket")
        yard.append(sum(us for name, us in base.items() if name.strip() == "socket"))
        found = _importtime("import socket, portsafe; portsafe.reserve_port")
        top = [us for name, us in found.items()
               if name.strip().startswith("portsafe") and name.startswith(" portsafe")]
        ours.append(sum(top))
    groups = max(3, runs // 3)
    size = max(1, len(ours) // groups)
    values = [statistics.median(ours[i:i + size]) / statistics.median(yard[i:i + size])
              for i in range(0, size * groups, size)]
    return [figure("imports", "import portsafe; portsafe.reserve_port (cumulative)",
                   "import socket (cumulative, its own process)", values,
                   limit="stdlib modules first imported for portsafe (random, fcntl, "
                   "threading) count in its cumulative time",
                   absolute={"portsafe modules, cumulative": ours,
                             "socket, cumulative": yard})]


def _child_cpu(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    return (usage.ru_utime + usage.ru_stime) * 1e6, out.strip()


def cli(pairs: int, repeats: int, lock_dir: str) -> list[dict]:
    """`PORT=$(portsafe)` with a running keeper vs portpicker's one-liner, client CPU."""
    bindir = os.path.dirname(sys.executable)
    portsafe_cmd = [os.path.join(bindir, "portsafe")]
    picker = [sys.executable, "-c", "import portpicker; print(portpicker.pick_unused_port())"]
    env = {**os.environ, "PORTSAFE_KEEPER_IDLE": "1"}
    printed: list[tuple[str, str]] = []

    def portsafe_call(directory: str) -> float:
        cpu, out = _child_cpu(portsafe_cmd, {**env, "PORTSAFE_LOCK_DIR": directory})
        printed.append((directory, out))
        return cpu

    warm, cold_first, cold_later = [], [], []
    figures = []
    try:
        portsafe_call(lock_dir)  # starts the keeper for the warm runs
        has_picker = subprocess.run(picker, capture_output=True, env=env,
                                    check=False).returncode == 0
        picked: list[float] = []
        for _ in range(repeats):
            ours, theirs = [], []
            for _ in range(pairs):
                ours.append(portsafe_call(lock_dir))
                if has_picker:
                    theirs.append(_child_cpu(picker, env)[0])
            warm.append(statistics.median(ours))
            if has_picker:
                picked.append(statistics.median(theirs))
            firsts, laters = [], []
            for _ in range(max(2, pairs // 3)):
                fresh = tempfile.mkdtemp(prefix="portsafe-bench-keeper-")
                firsts.append(portsafe_call(fresh))  # no keeper for this directory yet
                laters.append(portsafe_call(fresh))
            cold_first.append(statistics.median(firsts))
            cold_later.append(statistics.median(laters))
        if has_picker:
            figures.append(figure(
                "cli_vs_portpicker", "PORT=$(portsafe), keeper running (client CPU)",
                "python -c 'import portpicker; print(portpicker.pick_unused_port())'",
                ratios(warm, picked), target=0.8,
                limit="interpreter start-up and imports of the CLI; the keeper round "
                "trip is a small part", absolute={"portsafe": warm, "portpicker": picked}))
        figures.append(figure(
            "cli_first_vs_later", "PORT=$(portsafe), first call (starts the keeper)",
            "a later call (keeper running), client CPU", ratios(cold_first, cold_later),
            target=1.5, limit="starting the detached keeper (fork+exec) from the client",
            absolute={"first": cold_first, "later": cold_later}))
    finally:
        _release_leases(printed, env)
    return figures


def _release_leases(printed: list[tuple[str, str]], env: dict[str, str]) -> None:
    """End every lease the bench took, so that each keeper exits after its idle time."""
    portsafe_cmd = os.path.join(os.path.dirname(sys.executable), "portsafe")
    for directory, port in printed:
        if port.isdigit():
            subprocess.run([portsafe_cmd, "release", port], capture_output=True, check=False,
                           env={**env, "PORTSAFE_LOCK_DIR": directory})
    time.sleep(2.5)  # PORTSAFE_KEEPER_IDLE=1: every keeper is gone by now
    for directory in {d for d, _ in printed}:
        if "portsafe-bench-keeper-" in directory:
            shutil.rmtree(directory, ignore_errors=True)

