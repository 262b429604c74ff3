"""Proofs of the names backend (Linux): a held port is a name in the network namespace.

Each test runs its processes in a private network namespace of its own (``unshare
--net``, ``tests/support/netns.py``), so that nothing it holds or frees touches the machine's
ports, and checks the outcome without portsafe's bookkeeping: it binds the name itself,
or reads ``/proc/net/unix`` and ``/proc/*/fd`` (``tests/support/kernel.py``).

The first five are the deployments that handed one port to two processes when
reservations lived in a lock directory: each must now end in "held", never a duplicate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from tests.support import netns as _netns

pytestmark = [
    pytest.mark.names,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names are Linux's"),
]

# Helpers every script below starts with: hold ports and say which; is a name bound?
PRELUDE = textwrap.dedent("""
    import json, os, socket, subprocess, sys, time
    sys.path.insert(0, %r)
    from tests.support.kernel import name_holders, shown_name

    HOLD = ("import json, sys, portsafe\\n"
            "g = portsafe.reserve_ports(int(sys.argv[1]), **json.loads(sys.argv[2]))\\n"
            "print(json.dumps(g.ports), flush=True)\\n"
            "sys.stdin.read()\\n")
    TAKE = ("import json, sys, portsafe\\n"
            "try:\\n"
            "    r = portsafe.reserve_port(ports=json.loads(sys.argv[1]))\\n"
            "    print(json.dumps(r.port))\\n"
            "except portsafe.NoFreePortError:\\n"
            "    print(json.dumps(None))\\n")

    def hold(n=1, prefix=(), env=None, **options):
        proc = subprocess.Popen([*prefix, sys.executable, "-c", HOLD, str(n),
                                 json.dumps(options)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)
        line = proc.stdout.readline()
        assert line, f"holder failed: {proc.wait()}"
        return proc, json.loads(line)

    def take(ports, prefix=(), env=None):
        done = subprocess.run([*prefix, sys.executable, "-c", TAKE, json.dumps(ports)],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def bound(port):
        \"\"\"Whether port's name is held, asked of the kernel by binding it here.\"\"\"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(b"\\0" + shown_name(port)[1:].encode())
            except OSError:
                return True
            return False

    def stop(proc):
        proc.stdin.close()
        proc.wait(timeout=30)

    def fork_waiting():
        # A child that lives until done() is called: (its pid, done). When this returns,
        # the child runs (the fork hooks have run in it).
        read, write = os.pipe()
        started_read, started_write = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(write)
            os.write(started_write, b"s")
            os.read(read, 1)
            os._exit(0)
        os.close(read)
        os.read(started_read, 1)
        def done():
            os.write(write, b"x")
            os.waitpid(child, 0)
        return child, done
""") % os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def in_namespace(script: str, *args: str, timeout: float = 120) -> object:
    """Run PRELUDE + *script* in a private network namespace; its last line, as JSON."""
    if not _netns.available():
        pytest.skip("needs unshare --net (root or user namespaces)")
    done = subprocess.run([*_netns.PREFIX, sys.executable, "-c", PRELUDE + script, *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout.strip().splitlines()[-1])


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")


class TestDeploymentsThatSharedAPort:
    def test_separate_tmp_in_one_network_namespace(self) -> None:
        """PrivateTmp=yes, two containers with --network host, a pod's sidecar: two
        processes with their own /tmp (each a private tmpfs, in a mount namespace of its
        own) and one network namespace. The second is refused the first's port."""
        need("unshare", "mount")
        result = in_namespace(textwrap.dedent("""
            private_tmp = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount -t tmpfs tmpfs /tmp && exec "$0" "$@"']
            holder, [port] = hold(prefix=private_tmp)
            got = take([port], prefix=private_tmp)
            held = bound(port)
            pid = name_holders([port])[0]
            stop(holder)
            print(json.dumps([got, held, pid == holder.pid, bound(port)]))
        """))
        assert result == [None, True, True, False]

    def test_two_lock_dir_settings(self, tmp_path: object) -> None:
        """Two values of PORTSAFE_LOCK_DIR in one network namespace: one set of names."""
        result = in_namespace(textwrap.dedent("""
            first = dict(os.environ, PORTSAFE_LOCK_DIR=sys.argv[1] + "/a")
            second = dict(os.environ, PORTSAFE_LOCK_DIR=sys.argv[1] + "/b")
            holder, [port] = hold(env=first)
            got = take([port], env=second)
            held = bound(port)
            stop(holder)
            print(json.dumps([got, held, os.path.exists(sys.argv[1] + "/a")]))
        """), str(tmp_path))
        assert result == [None, True, False]  # and no lock directory was made

    def test_copied_or_rewritten_directory(self) -> None:
        """A copied lock directory (cp -a, an image layer), or one its owner empties and
        rewrites under a holder: nothing of it decides, so nothing of it can mislead."""
        need("unshare", "mount")
        result = in_namespace(textwrap.dedent("""
            own_tmp = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       'mount -t tmpfs tmpfs /tmp && mkdir -m 1777 /tmp/portsafe-locks && '
                       'exec "$0" "$@"']
            holder, [port] = hold(prefix=own_tmp)
            made = subprocess.run(own_tmp[:-1] + [own_tmp[-1].replace('exec "$0" "$@"',
                                  "ls -A /tmp/portsafe-locks | wc -l")],
                                  capture_output=True, text=True).stdout.strip()
            copied = dict(os.environ, PORTSAFE_LOCK_DIR="/tmp/portsafe-copy")
            got = take([port], prefix=own_tmp, env=copied)
            held = bound(port)
            stop(holder)
            print(json.dumps([made, got, held]))
        """))
        assert result == ["0", None, True]

    def test_two_copies_of_portsafe_in_one_process(self) -> None:
        """A harness that clears sys.modules loads portsafe twice: the second copy is
        refused the first one's port, and its release does not free it."""
        result = in_namespace(textwrap.dedent("""
            import portsafe
            first = portsafe.reserve_port()
            for name in [n for n in sys.modules if n == "portsafe" or
                         n.startswith("portsafe.")]:
                del sys.modules[name]
            import portsafe as second
            assert second is not portsafe
            try:
                second.reserve_port(ports=[first.port])
                got = True
            except second.NoFreePortError:
                got = False
            other = second.reserve_port(ports=range(first.port, first.port + 2))
            other.release()
            from portsafe._locking import files as _locks
            _locks.table().release(first.port)  # the second copy's: holds nothing there
            held = bound(first.port)
            first.release()
            print(json.dumps([got, other.port != first.port, held, bound(first.port)]))
        """))
        assert result == [False, True, True, False]

    def test_no_lock_directory_is_made(self) -> None:
        """On Linux a reservation touches no file: a fresh /tmp stays empty."""
        need("unshare", "mount")
        result = in_namespace(textwrap.dedent("""
            fresh = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                     'mount -t tmpfs tmpfs /tmp && "$0" "$@" && ls -A /tmp | wc -l']
            done = subprocess.run([*fresh, sys.executable, "-c",
                                   "import portsafe; portsafe.reserve_ports(3).release()"],
                                  capture_output=True, text=True)
            print(json.dumps(done.stdout.strip()))
        """))
        assert result == "0"


class TestNamespaces:
    def test_separate_network_namespaces_are_independent(self) -> None:
        """The same port is reserved in each of two network namespaces, as the kernel
        lets the same port be bound in each."""
        result = in_namespace(textwrap.dedent("""
            holder, [port] = hold()
            inner = subprocess.run([*sys.argv[1:], sys.executable, "-c",
                                    TAKE, json.dumps([port])],
                                   capture_output=True, text=True)
            held = bound(port)
            stop(holder)
            print(json.dumps([json.loads(inner.stdout), port, held]))
        """), *_netns.PREFIX)
        got, port, held = result  # type: ignore[misc]
        assert got == port
        assert held


class TestLifetime:
    def test_kill_9_frees_at_once(self) -> None:
        result = in_namespace(textwrap.dedent("""
            holder, ports = hold(n=3)
            before = [bound(p) for p in ports]
            holder.kill()
            holder.wait()
            print(json.dumps([before, [bound(p) for p in ports]]))
        """))
        assert result == [[True] * 3, [False] * 3]

    def test_fork_child_holds_nothing_and_release_frees_at_once(self) -> None:
        """A child forked from Python has no copy of the name: the parent's release frees
        the port while the child still runs."""
        result = in_namespace(textwrap.dedent("""
            import portsafe
            r = portsafe.reserve_port()
            child, done = fork_waiting()
            holders = name_holders([r.port])
            r.release()
            freed = not bound(r.port)
            done()
            print(json.dumps([holders == [os.getpid()], freed]))
        """))
        assert result == [True, True]

    def test_fork_child_of_a_holder_does_not_keep_it(self) -> None:
        """The child's inherited copy is closed at fork: only the parent's socket is
        open on the name's inode (from /proc/*/fd)."""
        result = in_namespace(textwrap.dedent("""
            import portsafe
            from tests.support.kernel import name_inodes
            r = portsafe.reserve_port()
            inode = name_inodes()[shown_name(r.port)]
            child, done = fork_waiting()
            def has(pid):
                return any(os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]"
                           for fd in os.listdir(f"/proc/{pid}/fd"))
            answer = [has(os.getpid()), has(child)]
            done()
            r.release()
            print(json.dumps(answer))
        """))
        assert result == [True, False]

    def test_exec_releases(self) -> None:
        result = in_namespace(textwrap.dedent("""
            script = ("import os, portsafe, sys\\n"
                      "r = portsafe.reserve_port()\\n"
                      "print(r.port, flush=True)\\n"
                      "sys.stdin.readline()\\n"
                      "os.execv('/bin/sh', ['sh', '-c', 'echo exec; read x'])\\n")
            proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            port = int(proc.stdout.readline())
            before = bound(port)
            proc.stdin.write("go\\n"); proc.stdin.flush()
            assert proc.stdout.readline().strip() == "exec"
            after = bound(port)
            proc.stdin.close(); proc.wait()
            print(json.dumps([before, after]))
        """))
        assert result == [True, False]


class TestDescriptors:
    def test_ten_thousand_held_with_the_soft_limit_raised(self) -> None:
        """10,000 held from a soft limit of 1024 (hard 20,000): the soft limit is raised,
        every name is bound (asked of /proc), and a socket opened after them still has a
        descriptor select() takes."""
        result = in_namespace(textwrap.dedent("""
            import resource, select, portsafe
            from tests.support.kernel import name_inodes
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            if hard < 10300:
                print(json.dumps("skip: hard limit %d" % hard)); sys.exit()
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
            held = [portsafe.reserve_port() for _ in range(10000)]
            names = name_inodes()
            bound_names = sum(shown_name(r.port) in names for r in held)
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0)); sock.listen()
                low = sock.fileno()
                select.select([sock], [], [], 0)
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            for r in held:
                r.release()
            print(json.dumps([len({r.port for r in held}), bound_names, low < 1024,
                              soft > 1024, soft <= hard]))
        """), timeout=300)
        if isinstance(result, str):
            pytest.skip(result)
        assert result == [10000, 10000, True, True, True]

    def test_select_after_a_thousand_held(self) -> None:
        result = in_namespace(textwrap.dedent("""
            import resource, select, portsafe
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            held = portsafe.reserve_ports(1000)
            fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0)); sock.listen()
                ready = select.select([sock], [sock], [], 0)
                print(json.dumps([sock.fileno() < 1024, sum(fd < 1024 for fd in fds) < 300]))
            held.release()
        """))
        assert result == [True, True]

    def test_past_the_hard_limit_nothing_is_left_half_held(self) -> None:
        result = in_namespace(textwrap.dedent("""
            import resource, portsafe
            from tests.support.kernel import name_inodes
            resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))
            before = len(os.listdir("/proc/self/fd"))
            try:
                portsafe.reserve_ports(400)
                message = None
            except portsafe.LockUnavailableError as exc:
                message = str(exc)
            left = sum(name.startswith("@portsafe1:") for name in name_inodes())
            print(json.dumps([message, left, len(os.listdir("/proc/self/fd")) - before]))
        """))
        message, left, extra = result  # type: ignore[misc]
        assert message is not None
        assert "RLIMIT_NOFILE" in message
        assert "300" in message
        assert left == 0
        assert extra == 0

    def test_too_many_open_files_is_not_a_missing_family(self) -> None:
        """EMFILE from a probe's socket() says what it is, and IPv6 is asked again later."""
        result = in_namespace(textwrap.dedent("""
            import resource, portsafe, socket
            from portsafe._core import probe as _probe
            portsafe.reserve_port().release()  # every module imported
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            hog = []
            try:
                while True:
                    hog.append(socket.socket())
            except OSError:
                pass
            try:
                portsafe.reserve_port(family=socket.AF_UNSPEC)
                said = "reserved"
            except OSError as exc:
                said = str(exc)
            for sock in hog:
                sock.close()
            with portsafe.reserve_port(family=socket.AF_UNSPEC) as r:
                both = [family for family, *_ in _probe.targets(None, socket.AF_UNSPEC, 1)]
            print(json.dumps([said, both]))
        """))
        said, families = result  # type: ignore[misc]
        assert "lacks that family" not in said
        assert "descriptor" in said or "RLIMIT_NOFILE" in said
        assert len(families) == 2  # IPv6 was not written off


class TestNames:
    def test_a_name_is_held_for_the_one_socket_type(self) -> None:
        """The format is DGRAM: a STREAM socket binding the same name is another name to
        the kernel, so nothing of another type can take a reservation's place."""
        result = in_namespace(textwrap.dedent("""
            import portsafe
            with portsafe.reserve_port() as r:
                name = b"\\0" + shown_name(r.port)[1:].encode()
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as same:
                    try:
                        same.bind(name); dgram = "bound"
                    except OSError as exc:
                        dgram = exc.errno
            print(json.dumps(dgram))
        """))
        import errno

        assert result == errno.EADDRINUSE

    def test_names_cannot_be_bound_is_a_clear_error(self) -> None:
        """Where abstract names are refused (a sandbox), reservations raise
        LockUnavailableError saying so; they do not fall back to lock files."""
        result = in_namespace(textwrap.dedent("""
            import errno, portsafe
            from portsafe._locking import names
            def refused(port, plan, high):
                return 4 | errno.EPERM << 8  # LOCK_ERROR, as a seccomp filter makes it
            from portsafe._core import probe as _probe
            probes = _probe.targets(None, socket.AF_INET, socket.SOCK_STREAM)
            probes.claim = (refused, probes.claim[1])
            try:
                portsafe.reserve_port()
                said = "reserved"
            except portsafe.LockUnavailableError as exc:
                said = str(exc)
            print(json.dumps(said))
        """))
        assert "abstract unix-socket name" in result  # type: ignore[operator]
        assert "sandbox" in result  # type: ignore[operator]

    def test_lock_dir_setting_is_ignored_with_a_warning(self) -> None:
        result = in_namespace(textwrap.dedent("""
            env = dict(os.environ, PORTSAFE_LOCK_DIR="/tmp/somewhere")
            done = subprocess.run([sys.executable, "-W", "always", "-c",
                                   "import portsafe; portsafe.reserve_port().release()"],
                                  capture_output=True, text=True, env=env)
            print(json.dumps([done.returncode, done.stderr]))
        """))
        code, stderr = result  # type: ignore[misc]
        assert code == 0
        assert "PORTSAFE_LOCK_DIR is ignored on Linux" in stderr


class TestManyProcessesAndUsers:
    @pytest.mark.parametrize(("ports", "keep", "churn", "held_total", "short_total"), [
        (None, 4, 40, 256, 0), (300, 3, 40, 192, 0), (300, 5, 0, 300, 20)],
        ids=["default range", "300 ports", "300 ports, 320 asked"])
    def test_sixty_four_processes_two_users(self, ports: int | None, keep: int, churn: int,
                                            held_total: int, short_total: int) -> None:
        """64 processes, half of them uid 65534, reserve and release in a loop while
        holding some: no port is ever held by two (the kernel's view, from /proc, while
        all still hold), and NoFreePortError comes exactly for the shortfall."""
        if os.getuid() != 0:
            pytest.skip("needs root to run processes as uid 65534")
        result = in_namespace(textwrap.dedent("""
            WORKER = '''
            import json, os, sys, time, portsafe
            start, ports, uid = float(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
            keep, churn = int(sys.argv[4]), int(sys.argv[5])
            portsafe.reserve_port().release()
            if uid:
                os.setgid(uid); os.setuid(uid)
            options = {"ports": range(*ports)} if ports else {}
            while time.time() < start:
                time.sleep(0.001)
            held, short = [], 0
            for _ in range(keep):
                try:
                    held.append(portsafe.reserve_port(**options))
                except portsafe.NoFreePortError:
                    short += 1
            for _ in range(churn):
                try:
                    portsafe.reserve_port(**options).release()
                except portsafe.NoFreePortError:
                    short += 1
            print(json.dumps({"held": [r.port for r in held], "short": short}), flush=True)
            sys.stdin.read()
            '''
            ports = json.loads(sys.argv[1])
            start = time.time() + 3
            procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(start),
                                       json.dumps(ports), "65534" if i % 2 else "0",
                                       sys.argv[2], sys.argv[3]],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True) for i in range(64)]
            reports = []
            for proc in procs:
                line = proc.stdout.readline()
                assert line, f"worker died: {proc.wait()}"
                reports.append(dict(json.loads(line), pid=proc.pid))
            claims = [(r["pid"], port) for r in reports for port in r["held"]]
            holders = name_holders([port for _, port in claims])
            wrong = [c for c, h in zip(claims, holders) if c[0] != h]
            for proc in procs:
                stop(proc)
            held = len(claims)
            print(json.dumps([len(set(p for _, p in claims)) == held, wrong, held,
                              sum(r["short"] for r in reports)]))
        """), json.dumps([31000, 31300] if ports else None), str(keep), str(churn),
            timeout=600)
        distinct, wrong, held, short = result  # type: ignore[misc]
        assert distinct
        assert wrong == []
        assert (held, short) == (held_total, short_total)


def test_auto_mode_keeps_its_leases_within_the_descriptor_limit() -> None:
    """Each auto-mode lease holds a name, one descriptor: the cap is a quarter of the soft
    limit, whatever PORTSAFE_AUTO_MAX_LEASES says."""
    script = ("import resource\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (200, "
              "resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
              "from portsafe._auto import sockets as _autosock\n"
              "print(_autosock._lease_settings()[1])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, env=dict(os.environ, PORTSAFE_AUTO_MAX_LEASES="1000"))
    assert int(done.stdout) == 50
