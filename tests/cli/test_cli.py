"""The ``portsafe`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING

import pytest
from tests.support import netns

import portsafe
from portsafe._cli.run import substitute
from portsafe._platform import NAMES
from portsafe._services import portserver as _server

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX command line"),
    pytest.mark.timeout(120),
]
VERBS = ["reserve", "release", "run", "list", "who", "ranges", "doctor", "serve"]


@pytest.fixture
def env(tmp_path: Path):
    """A private keeper, stopped after the test. Its address hashes PORTSAFE_EXCLUDE as
    written, so a spelling of this test's own (privileged ports, never candidates)
    gives it a keeper no other test shares; where ports are held by lock files, a
    private lock directory too (only subprocesses reserve in it)."""
    rng = random.Random()
    exclude = " ".join([f"1-{rng.randrange(1, 1024)}"] +
                       [str(rng.randrange(1, 1024)) for _ in range(3)])
    private = dict(os.environ, PORTSAFE_EXCLUDE=exclude, PORTSAFE_KEEPER_IDLE="1")
    private.pop("PORTSAFE_LOCK_DIR", None)
    if not NAMES:
        lock_dir = tmp_path / "locks"
        lock_dir.mkdir(mode=0o700)
        private["PORTSAFE_LOCK_DIR"] = str(lock_dir)
    yield private
    done = subprocess.run([sys.executable, "-c", ("from portsafe._services import keeper_client; "
                           "print(keeper_client.call({'op': 'ping'}, start=False)['pid'])")],
                          env=private, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return
    pid = int(done.stdout)
    os.kill(pid, signal.SIGTERM)
    for _ in range(800):
        if _server.process_identity(pid) is None:
            return
        time.sleep(0.025)


def portsafe_cli(*args: str, env: dict[str, str] | None = None,
                 **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "portsafe", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False,
                          **kwargs)  # type: ignore[call-overload]


def held_ports(env: dict[str, str]) -> dict[int, int]:
    """(port -> pid) of the reservations in *env*'s lock directory, asked of a subprocess."""
    done = subprocess.run([sys.executable, "-c", ("import json; from portsafe._locking import "
                           "files as _locks; print(json.dumps(_locks.holders()))")], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return dict(json.loads(done.stdout))


def can_reserve(env: dict[str, str], port: int) -> bool:
    """Whether a fresh process could reserve *port* in *env*'s lock directory."""
    done = portsafe_cli("--lease", "0", "--range", f"{port}-{port}", env=env)
    return done.returncode == 0


class TestHelp:
    @pytest.mark.parametrize("verb", VERBS)
    def test_every_verb_has_help_with_exit_codes(self, verb: str) -> None:
        """`portsafe VERB --help` works and documents the exit codes."""
        done = portsafe_cli(verb, "--help")
        assert done.returncode == 0
        assert "exit codes:" in done.stdout

    def test_help_imports_no_machinery(self) -> None:
        """--help loads neither the reservation core nor the server (fast, and works
        even if they are broken): the command line's own modules and the settings."""
        code = ("import sys; from portsafe._cli.main import main; main(['--help']); "
                "print(sorted(m for m in sys.modules if m.startswith('portsafe.')))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, check=True)
        assert done.stdout.strip().endswith(
            "['portsafe._cli', 'portsafe._cli.exits', 'portsafe._cli.main', "
            "'portsafe._cli.parsers', 'portsafe._errors', 'portsafe._settings']")

    def test_bare_call_imports_only_the_keeper_client(self, env) -> None:
        """`portsafe` alone (the `PORT=$(portsafe)` case) loads no argparse, json, socket
        or subprocess, and no portsafe module but the keeper's client: its cost is
        interpreter start-up plus one round trip."""
        assert portsafe_cli(env=env).returncode == 0  # a keeper is running now
        code = ("import sys; from portsafe._cli.main import main; sys.argv[1:] = []; "
                "import io, contextlib\n"
                "with contextlib.redirect_stdout(io.StringIO()): code = main()\n"
                "print(code, sorted(m for m in sys.modules if m.startswith('portsafe')), "
                "[m for m in ('argparse', 'json', 'socket', 'subprocess', 'hashlib') "
                "if m in sys.modules])")
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60, check=True)
        assert done.stdout.strip() == ("0 ['portsafe', 'portsafe._cli', 'portsafe._cli.exits', "
                                       "'portsafe._cli.main', 'portsafe._cli.reserve', "
                                       "'portsafe._errors', 'portsafe._services', "
                                       "'portsafe._services.keeper_client', "
                                       "'portsafe._settings'] []")

    def test_usage_errors_exit_2(self) -> None:
        """Bad arguments exit 2 with argparse's message."""
        for args in (["--range", "9-1"], ["-n", "0"], ["who", "70000"], ["--lease", "x"]):
            done = portsafe_cli(*args)
            assert done.returncode == 2, args
            assert "error" in done.stderr

    def test_version(self) -> None:
        """--version prints the installed version."""
        assert portsafe_cli("--version").stdout.startswith("portsafe ")


class TestReserve:
    def test_command_substitution_returns_at_once_and_stays_held(self, env) -> None:
        """PORT=$(portsafe) returns although the keeper lives on (it holds no pipe), and
        the port is held by the keeper afterwards."""
        done = subprocess.run(["sh", "-c", (f'PORT=$("{sys.executable}" -m portsafe); '
                               'echo "$PORT"')], env=env, capture_output=True, text=True,
                              timeout=30, check=True)
        port = int(done.stdout)
        holder = held_ports(env).get(port)
        assert holder is not None
        assert holder != os.getpid()
        assert not can_reserve(env, port)

    def test_release_ends_the_lease(self, env) -> None:
        """`portsafe release PORT` frees it at once; a second release exits 1."""
        port = int(portsafe_cli(env=env).stdout)
        assert portsafe_cli("release", str(port), env=env).returncode == 0
        assert port not in held_ports(env)
        assert can_reserve(env, port)
        done = portsafe_cli("release", str(port), env=env)
        assert done.returncode == 1
        assert "no lease" in done.stderr

    def test_several_contiguous_with_json(self, env) -> None:
        """-n 3 --contiguous --json: three consecutive ports and who holds them."""
        done = portsafe_cli("reserve", "-n", "3", "--contiguous", "--json", env=env)
        info = json.loads(done.stdout)
        low = info["ports"][0]
        assert info["ports"] == [low, low + 1, low + 2]
        assert info["lease"] == 60
        assert all(held_ports(env).get(p) == info["holder_pid"] for p in info["ports"])

    def test_plain_output_is_one_line(self, env) -> None:
        """Several ports print space-separated on one line (`read A B <<<"$(...)"`)."""
        out = portsafe_cli("-n", "2", env=env).stdout
        assert out.count("\n") == 1
        assert len(out.split()) == 2

    def test_lease_zero_holds_nothing(self, env) -> None:
        """--lease 0 prints a verified port and holds nothing (no keeper involved)."""
        done = portsafe_cli("--lease", "0", env=env)
        assert int(done.stdout) not in held_ports(env)
        assert portsafe_cli("release", done.stdout.strip(), env=env).returncode == 1

    def test_no_free_port_exits_3(self, env) -> None:
        """When every candidate is taken the exit code is 3 and the message says why."""
        port = int(portsafe_cli("--range", "23500-23999", env=env).stdout)  # leased
        done = portsafe_cli("--range", f"{port}-{port}", env=env)
        assert done.returncode == 3
        assert str(port) in done.stderr
        assert "Errno" not in done.stderr

    def test_bad_setting_exits_2(self, env) -> None:
        """A bad PORTSAFE_RANGE is a usage error."""
        done = portsafe_cli("--lease", "0", env=dict(env, PORTSAFE_RANGE="banana"))
        assert done.returncode == 2
        assert "PORTSAFE_RANGE" in done.stderr

    def test_bad_keeper_idle_is_a_clean_usage_error(self, env) -> None:
        """PORTSAFE_KEEPER_IDLE=garbage: exit 2 naming the setting, no port, no traceback."""
        for args in ((), ("-n", "2")):
            done = portsafe_cli(*args, env=dict(env, PORTSAFE_KEEPER_IDLE="garbage"))
            assert done.returncode == 2, done.stderr
            assert done.stdout == ""
            assert "PORTSAFE_KEEPER_IDLE='garbage'" in done.stderr
            assert "Traceback" not in done.stderr


class TestRun:
    def test_tokens_env_and_exit_code(self, env) -> None:
        """{portK} tokens are swapped (JSON survives), PORTSAFE_PORT(S) are set, and the
        exit code passes through."""
        code = ("import json, os, sys; print(json.dumps([sys.argv[1:], "
                "os.environ['PORTSAFE_PORT'], os.environ['PORTSAFE_PORTS']])); sys.exit(7)")
        done = portsafe_cli("run", "-n", "2", "--", sys.executable, "-c", code,
                            '{"a": {port0}, "b": [{port1}], "c": {}}', "--port={port}",
                            env=env)
        assert done.returncode == 7
        args, first, both = json.loads(done.stdout)
        p0, p1 = map(int, both.split())
        assert json.loads(args[0]) == {"a": p0, "b": [p1], "c": {}}
        assert args[1] == f"--port={p0}"
        assert int(first) == p0

    def test_holds_for_the_commands_life(self, env) -> None:
        """While the command runs, `portsafe run` (its parent) holds the port."""
        code = ("import os, sys; from portsafe._locking import files as _locks; "
                "print(dict(_locks.holders()).get(int(os.environ['PORTSAFE_PORT'])) "
                "== os.getppid())")
        done = portsafe_cli("run", "--", sys.executable, "-c", code, env=env)
        assert done.stdout.strip() == "True"

    def test_without_double_dash(self, env) -> None:
        """`portsafe run CMD ARGS` works too when CMD does not start with a dash."""
        done = portsafe_cli("run", sys.executable, "-c", "print('{port}')", env=env)
        assert done.stdout.strip().isdigit()

    @pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP", "SIGINT", "SIGUSR1"])
    def test_signals_are_passed_on(self, env, name: str) -> None:
        """A signal sent to `portsafe run` reaches the command (no terminal here)."""
        signum = getattr(signal, name)
        code = ("import signal, sys, time\n"
                f"signal.signal({int(signum)}, lambda *a: sys.exit(40))\n"
                "print('ready', flush=True)\n"
                "time.sleep(60)\n")
        proc = subprocess.Popen([sys.executable, "-m", "portsafe", "run", "--",
                                 sys.executable, "-c", code], env=env,
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 40
        proc.stdout.close()

    @pytest.mark.parametrize("inherited", [signal.SIG_DFL, signal.SIG_IGN])
    def test_signal_during_spawn_is_not_lost(self, inherited) -> None:
        """A signal that arrives while the child is being started still reaches it,
        even when this process inherited "ignore" for it (as under some CI runners)."""
        from portsafe._cli import run as _cli_run

        previous = signal.signal(signal.SIGHUP, inherited)
        try:
            def start() -> subprocess.Popen[bytes]:
                os.kill(os.getpid(), signal.SIGHUP)  # arrives before the child exists
                return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

            code = _cli_run.run_forwarding_signals(start)
        finally:
            signal.signal(signal.SIGHUP, previous)
        assert code == -signal.SIGHUP

    def test_death_by_signal_is_128_plus_n(self, env) -> None:
        """A command killed by signal N makes `portsafe run` exit 128+N, as shells do."""
        done = portsafe_cli("run", "--", sys.executable, "-c",
                            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", env=env)
        assert done.returncode == 128 + signal.SIGKILL

    def test_command_not_found_is_127(self, env) -> None:
        """A missing command exits 127 and the reservation is released."""
        done = portsafe_cli("run", "--", "/no/such/command", env=env)
        assert done.returncode == 127
        assert "not found" in done.stderr

    def test_unknown_token_is_a_usage_error(self, env) -> None:
        """{port2} without -n 3 says how to fix it."""
        done = portsafe_cli("run", "--", "echo", "{port2}", env=env)
        assert done.returncode == 2
        assert "-n 3" in done.stderr

    def test_needs_a_command(self, env) -> None:
        """`portsafe run` alone is a usage error."""
        assert portsafe_cli("run", env=env).returncode == 2


class TestSubstitute:
    def test_only_port_tokens_change(self) -> None:
        """Format-like text other than {port}/{portK} is left exactly as it is."""
        assert substitute("{} {0} {name} {port} {port1}", [1, 2]) == "{} {0} {name} 1 2"


class TestInspect:
    def test_list_shows_holders_and_commands(self, env) -> None:
        """list names each reserved port's pid and command line, and keeper leases. In a
        private network namespace: list shows every holder of the namespace."""
        if not netns.available():
            pytest.skip("needs unshare --net (root or user namespaces)")
        script = textwrap.dedent("""
            import json, subprocess, sys
            def cli(*args):
                return subprocess.run([sys.executable, "-m", "portsafe", *args],
                                      capture_output=True, text=True, check=True).stdout
            port = int(cli())
            listed = cli("run", "--", sys.executable, "-m", "portsafe", "list", "--json")
            print(json.dumps([port, json.loads(listed), cli("list")]))
        """)
        done = subprocess.run([*netns.PREFIX, sys.executable, "-c", script], env=env,
                              capture_output=True, text=True, timeout=120, check=True)
        port, listed, readable = json.loads(done.stdout)
        rows = {row["port"]: row for row in listed}
        assert rows[port]["lease_expires_in"] > 0
        assert "portsafe._services.keeper" in rows[port]["command"]
        run_rows = [r for p, r in rows.items() if p != port]
        assert len(run_rows) == 1
        assert "portsafe run" in run_rows[0]["command"]
        assert str(port) in readable
        assert "PORT" in readable

    def test_who_names_reservation_and_socket(self) -> None:
        """who PORT reports the portsafe holder and the listening socket's process."""
        with portsafe.reserve_port() as r, socket.socket() as sock:
            sock.bind(("127.0.0.1", r.port))
            sock.listen()
            # This process reserves in the default lock directory: ask about that one.
            done = portsafe_cli("who", str(r.port), "--json")
            readable = portsafe_cli("who", str(r.port))
        assert done.returncode == 0
        info = json.loads(done.stdout)
        assert info["reserved_by"][0]["pid"] == os.getpid()
        if sys.platform.startswith("linux"):
            assert any(s["state"] == "LISTEN" and s["pid"] == os.getpid()
                       for s in info["sockets"])
        assert f"reserved by pid {os.getpid()}" in readable.stdout

    def test_who_nobody_exits_1(self, env) -> None:
        """Nobody holding the port is exit code 1, like grep finding nothing."""
        port = int(portsafe_cli("--lease", "0", env=env).stdout)
        done = portsafe_cli("who", str(port), env=env)
        assert done.returncode == 1
        assert "nobody" in done.stdout

    def test_ranges(self, env) -> None:
        """ranges --json has the ephemeral range and the candidates with sources."""
        info = json.loads(portsafe_cli("ranges", "--json", env=env).stdout)
        assert "source" in info["ephemeral"]
        assert info["candidates"]["count"] > 0
        assert "candidates:" in portsafe_cli("ranges", env=env).stdout


class TestServeVerb:
    def test_address_in_use_exit_4(self, env) -> None:
        """serve on a taken address exits 4 naming the address."""
        address = f"@portsafe-cli-test-{os.getpid()}"
        holder = _server.bind_unix(address)
        try:
            done = portsafe_cli("serve", "--address", address, env=env)
        finally:
            holder.close()
        assert done.returncode == 4
        assert address in done.stderr


class TestRoughEdges:
    """What a new user hits first: typos, several ports, foreign addresses, plurals."""

    def test_mistyped_verb_suggests_the_right_one(self, env) -> None:
        """`portsafe lsit` is not read as arguments to reserve: exit 2, did you mean."""
        done = portsafe_cli("lsit", env=env)
        assert done.returncode == 2
        assert "unknown verb 'lsit'; did you mean 'list'?" in done.stderr
        assert done.stdout == ""
        other = portsafe_cli("frobnicate", env=env)
        assert other.returncode == 2
        assert "unknown verb 'frobnicate'" in other.stderr
        assert "reserve" in other.stderr  # lists the verbs

    def test_who_takes_several_ports(self, env) -> None:
        """`portsafe who 8080 8081` answers for each port; --json gives a list."""
        first, second = (int(p) for p in portsafe_cli("-n", "2", env=env).stdout.split())
        done = portsafe_cli("who", str(first), str(second), env=env)
        assert done.returncode == 0, done.stderr
        assert f"port {first}: reserved by pid" in done.stdout
        assert f"port {second}: reserved by pid" in done.stdout
        infos = json.loads(portsafe_cli("who", str(first), str(second), "--json",
                                        env=env).stdout)
        assert [info["port"] for info in infos] == [first, second]

    def test_an_address_not_of_this_machine_is_a_usage_error(self, env) -> None:
        """--host 192.0.2.1 (TEST-NET; bind fails locally with EADDRNOTAVAIL, nothing is
        sent) exits 2, with and without the keeper."""
        for args in (["--host", "192.0.2.1", "--lease", "0"], ["--host", "192.0.2.1"],
                     ["run", "--host", "192.0.2.1", "--", "true"]):
            done = portsafe_cli(*args, env=env)
            assert done.returncode == 2, (args, done.stderr)
            assert "192.0.2.1" in done.stderr
            assert done.stdout == ""

    def test_too_many_ports_names_cli_flags(self, env) -> None:
        """More ports than candidates: the message names -n and --range, not ports=."""
        for lease in ("0", "60"):
            done = portsafe_cli("-n", "3", "--range", "23400-23401", "--lease", lease, env=env)
            assert done.returncode == 3, done.stderr
            assert "cannot reserve 3 ports: there are only 2 candidate ports" in done.stderr
            assert "--range" in done.stderr
            assert "ports=" not in done.stderr
        huge = portsafe_cli("-n", "100000", env=env)
        assert huge.returncode == 2
        assert "-n" in huge.stderr
        assert "ports=" not in huge.stderr

    def test_one_port_is_singular(self, env) -> None:
        """No "no 1 free ports", no "only 1 were reserved"."""
        port = int(portsafe_cli("--range", "23450-23499", env=env).stdout)
        done = portsafe_cli("--range", f"{port}-{port}", "--lease", "0", env=env)
        assert done.returncode == 3
        assert "1 free ports" not in done.stderr
        assert "1 candidate ports" not in done.stderr
        assert "ports=" not in done.stderr
        assert "no free port among 1 candidate port (--range" in done.stderr
        run = portsafe_cli("run", "--", "echo", "{port1}", env=env)
        assert run.returncode == 2
        assert "only 1 port was reserved" in run.stderr

    def test_ranges_text_has_no_python_reprs(self, env) -> None:
        """`portsafe ranges` is text for people: no None, no dict or list reprs."""
        text = portsafe_cli("ranges", env=env).stdout
        assert "None" not in text
        assert "{'" not in text
        assert "[[" not in text
        assert "ephemeral:" in text

    def test_public_names_in_tracebacks(self) -> None:
        """Errors show portsafe.NoFreePortError, not the private module path; they still
        pickle."""
        import pickle

        code = "import portsafe; raise portsafe.NoFreePortError('x')"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, check=False)
        assert "portsafe.NoFreePortError: [Errno 98] x" in done.stderr
        assert "portsafe._errors" not in done.stderr
        for cls in (portsafe.AddressInUseError, portsafe.Holder, portsafe.LockDirError,
                    portsafe.InvalidSettingError, portsafe.PortsafeError):
            assert cls.__module__ == "portsafe"
        exc = portsafe.AddressInUseError("busy", port=5)
        assert pickle.loads(pickle.dumps(exc)).port == 5
        assert repr(portsafe.Holder(1, None, "LISTEN", "::", 2, socket.AF_INET6,
                                    socket.SOCK_STREAM)).startswith("Holder(")


class TestPipes:
    @pytest.mark.parametrize("verb", [["ranges", "--json"], ["ranges"], ["doctor", "--json"],
                                      ["--help"]])
    def test_reader_closing_early_is_not_an_error(self, env, verb: list[str]) -> None:
        """`portsafe ranges --json | head -c 10`: exit 0 and no traceback, every time."""
        command = " ".join([f'"{sys.executable}"', "-m", "portsafe", *verb])
        for _ in range(6):
            done = subprocess.run(["sh", "-c", f"{command} | head -c 10 >/dev/null"],
                                  env=env, capture_output=True, text=True, timeout=60,
                                  check=False)
            assert "Traceback" not in done.stderr
            assert "Broken pipe" not in done.stderr
        # The exit status itself, without a shell between:
        for _ in range(6):
            proc = subprocess.Popen([sys.executable, "-m", "portsafe", *verb], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert proc.stdout is not None
            assert proc.stderr is not None
            proc.stdout.read(10)
            proc.stdout.close()
            assert proc.wait(timeout=60) == 0
            assert b"Traceback" not in proc.stderr.read()
            proc.stderr.close()


_STAND_INS = {
    # ./server --port N: a real HTTP server; its pid in server.pid (exec keeps the pid).
    "server": '#!/bin/sh\necho $$ > server.pid\nexec "{python}" -m http.server "$2" '
              "--bind 127.0.0.1 >/dev/null 2>&1\n",
    # ./wait-for HOST:PORT, ./client --port N, ./tests --server URL
    "wait-for": '#!/bin/sh\nexec "{python}" -c "import socket, sys, time\n'
                "host, port = sys.argv[1].rsplit(':', 1)\n"
                "for _ in range(400):\n"
                "    try:\n"
                "        socket.create_connection((host, int(port)), 1).close(); break\n"
                "    except OSError: time.sleep(0.025)\n"
                'else: sys.exit(1)" "$1"\n',
    "client": '#!/bin/sh\n./wait-for "127.0.0.1:$2" && exec "{python}" -c "import '
              "http.client, sys\nc = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]),"
              " timeout=10)\nc.request('GET', '/')\n"
              'sys.exit(0 if c.getresponse().status == 200 else 1)" "$2"\n',
    "tests": '#!/bin/sh\nport=${2##*:}\n./client --port "$port" || exit 1\n'
             'exit "${TESTS_EXIT:-0}"\n',
}


def _docs_makefile() -> str:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    return text.split("```make\n", 1)[1].split("```", 1)[0]


def _recipe_as_sh(makefile: str, target: str) -> str:
    """The recipe of *target*, as make would hand it to /bin/sh (where make is missing)."""
    lines = makefile.split(f"\n{target}:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    body = "\n".join(line[1:] for line in lines if line.startswith("\t"))
    return body.replace("\\\n", "").replace("$$", "$")


class TestDocs:
    @pytest.mark.parametrize("target", ["integration", "e2e"])
    @pytest.mark.parametrize("tests_exit", [0, 3])
    def test_makefile_recipes_stop_the_server_and_pass_the_exit_on(
            self, env, tmp_path: Path, target: str, tests_exit: int) -> None:
        """docs/cli.md's Makefile, run by make (or /bin/sh, dash here): the server is gone
        afterwards and the recipe fails exactly when the tests fail."""
        import shutil

        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        wrapper = bin_dir / "portsafe"
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m portsafe "$@"\n')
        wrapper.chmod(0o755)
        for name, script in _STAND_INS.items():
            path = tmp_path / name
            path.write_text(script.replace("{python}", sys.executable))
            path.chmod(0o755)
        makefile = _docs_makefile()
        if target == "integration":  # `./tests` stands for the failing part here
            makefile = makefile.replace('./client --port "$$PORTSAFE_PORT";',
                                        './tests --server "127.0.0.1:$$PORTSAFE_PORT";')
        (tmp_path / "Makefile").write_text(makefile)
        run_env = dict(env, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
                       TESTS_EXIT=str(tests_exit))
        if shutil.which("make"):
            command = ["make", "-s", target]
        else:
            command = ["/bin/sh", "-c", _recipe_as_sh(makefile, target)]
        done = subprocess.run(command, cwd=tmp_path, env=run_env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert (done.returncode == 0) == (tests_exit == 0), done.stderr
        server = int((tmp_path / "server.pid").read_text())
        for _ in range(800):
            if _server.process_identity(server) is None:
                break
            time.sleep(0.025)
        else:
            os.kill(server, signal.SIGKILL)
            pytest.fail(f"the recipe left its server (pid {server}) running")
