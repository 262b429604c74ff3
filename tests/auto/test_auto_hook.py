"""Auto mode's start-up hook: PORTSAFE_AUTO reaches child processes; the wheel ships it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.auto_env import HOOK_FILE, hook_env

from portsafe._auto import switch as _auto

ROOT = Path(__file__).resolve().parents[2]

REPORT = textwrap.dedent("""
    import json, sys
    at_start = "socket" in sys.modules
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    from portsafe._auto import switch as _auto
    from portsafe._core.ranges import ephemeral_port_range
    low, high = ephemeral_port_range()
    print(json.dumps({"socket_at_start": at_start, "enabled": _auto.enabled(),
                      "outside": not low <= port <= high, "stats": _auto.stats()}))
""")


def run_child(env: dict[str, str], code: str = REPORT,
              python: str = sys.executable) -> dict[str, object]:
    done = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=60)
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    result["stderr"] = done.stderr
    return result


class TestHookLine:
    def test_is_one_import_line(self) -> None:
        """site runs a .pth line only if it starts with 'import'; ours is one such line."""
        lines = HOOK_FILE.read_text().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("import ")

    def test_on_in_the_child_without_importing_socket(self, tmp_path: Path) -> None:
        """PORTSAFE_AUTO=1: the child's bind(0) is reserved; socket is not imported early."""
        result = run_child(hook_env(tmp_path, PORTSAFE_AUTO="1",
                                    PORTSAFE_LOCK_DIR=str(tmp_path / "locks")))
        assert result["enabled"] is True
        assert result["socket_at_start"] is False
        assert result["outside"] is True
        assert result["stats"] == {"reserved": 1, "fallbacks": 0, "fallback_reasons": [],
                                   "leases_held": 1, "probes_leased": 0,
                                   "refused_by_lease": 0, "uncovered": []}

    @pytest.mark.parametrize("value", ["0", "off", ""])
    def test_off_values(self, tmp_path: Path, value: str) -> None:
        """PORTSAFE_AUTO=0 (or off, or empty) patches nothing."""
        result = run_child(hook_env(tmp_path, PORTSAFE_AUTO=value))
        assert result["enabled"] is False
        assert result["stats"] == {"reserved": 0, "fallbacks": 0, "fallback_reasons": [],
                                   "leases_held": 0, "probes_leased": 0,
                                   "refused_by_lease": 0, "uncovered": []}

    def test_invalid_value_says_so(self, tmp_path: Path) -> None:
        """A value that is not a boolean leaves auto mode off with one line on stderr."""
        result = run_child(hook_env(tmp_path, PORTSAFE_AUTO="perhaps"))
        assert result["enabled"] is False
        assert str(result["stderr"]).count("PORTSAFE_AUTO='perhaps': not a boolean") == 1

    def test_enable_reaches_children(self, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
        """enable() exports PORTSAFE_AUTO=1: a child started afterwards is patched."""
        monkeypatch.delenv("PORTSAFE_AUTO", raising=False)
        env = hook_env(tmp_path, PORTSAFE_LOCK_DIR=str(tmp_path / "locks"))
        _auto.enable()
        try:
            env["PORTSAFE_AUTO"] = os.environ["PORTSAFE_AUTO"]
            assert run_child(env)["enabled"] is True
        finally:
            _auto.disable()

    def test_missing_hook_is_said_once(self, caplog: pytest.LogCaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the hook (an editable install), enable() logs it once per process."""
        monkeypatch.setattr(_auto, "hook_installed", lambda: False)
        monkeypatch.setitem(_auto._state, "said", False)
        with caplog.at_level("WARNING", logger="portsafe.auto"):
            for _ in range(2):
                _auto.enable()
                _auto.disable()
        assert caplog.text.count("start-up hook portsafe-auto.pth is not installed") == 1

    def test_unittest_under_the_variable(self, tmp_path: Path) -> None:
        """PORTSAFE_AUTO=1 python -m unittest: a suite's bind-close helper is covered."""
        (tmp_path / "test_unit.py").write_text(textwrap.dedent("""
            import socket, unittest
            import portsafe

            def find_free_port():
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    return sock.getsockname()[1]

            class TestPort(unittest.TestCase):
                def test_reserved(self):
                    port = find_free_port()
                    low, high = portsafe.ephemeral_port_range()
                    self.assertFalse(low <= port <= high)
        """))
        env = hook_env(tmp_path, PORTSAFE_AUTO="1", PORTSAFE_LOCK_DIR=str(tmp_path / "locks"))
        done = subprocess.run([sys.executable, "-m", "unittest", "-v", "test_unit"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert "test_reserved" in done.stderr

    def test_watcher_leaves_other_imports_alone(self, tmp_path: Path) -> None:
        """Modules other than the watched ones keep their loader; socket gets its own back."""
        code = ("import json, email, socket;"
                "print(json.dumps([type(email.__loader__).__name__,"
                " type(socket.__loader__).__name__, type(socket.__spec__.loader).__name__]))")
        done = subprocess.run([sys.executable, "-c", code],
                              env=hook_env(tmp_path, PORTSAFE_AUTO="1"),
                              capture_output=True, text=True, check=True)
        assert json.loads(done.stdout) == ["SourceFileLoader"] * 3


def _build_wheel(into: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                           str(into), str(ROOT)], capture_output=True, text=True,
                          check=False, timeout=300)
    wheels = list(into.glob("portsafe-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"cannot build the wheel here: {done.stderr.strip()[-300:]}")
    return wheels[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The wheel, built from this checkout and pip-installed into a fresh venv."""
    where = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(where)
    env_dir = where / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = str(env_dir / "bin" / "python")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    pytest_installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "pytest"],
        capture_output=True, timeout=300, check=False)
    if pytest_installed.returncode != 0:
        pytest.skip("cannot install pytest into the fresh venv here")
    yield wheel, python
    shutil.rmtree(where, ignore_errors=True)


@pytest.mark.skipif(sys.platform == "win32", reason="venv layout differs")
class TestInstalledWheel:
    def test_wheel_has_the_hook_at_the_top(self, installed: tuple[Path, str]) -> None:
        """The .pth sits at the wheel's root, i.e. the top of site-packages."""
        wheel, _ = installed
        with zipfile.ZipFile(wheel) as archive:
            assert "portsafe-auto.pth" in archive.namelist()
            assert archive.read("portsafe-auto.pth") == HOOK_FILE.read_bytes()

    def test_child_of_the_installed_venv(self, installed: tuple[Path, str],
                                         tmp_path: Path) -> None:
        """A plain `python` of that venv honours PORTSAFE_AUTO=1 with no help."""
        _, python = installed
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("PORTSAFE_AUTO", "PYTHONPATH"))}
        env["PORTSAFE_LOCK_DIR"] = str(tmp_path / "locks")
        on = run_child({**env, "PORTSAFE_AUTO": "1"}, python=python)
        assert on["enabled"] is True
        assert on["outside"] is True
        assert on["socket_at_start"] is False
        off = run_child(env, python=python)
        assert off["enabled"] is False
        hooked = subprocess.run([python, "-c", ("from portsafe._auto import switch as _auto;"
                                 "print(_auto.hook_installed())")], env=env, check=True,
                                capture_output=True, text=True)
        assert hooked.stdout.strip() == "True"

    def test_pytest_under_the_variable(self, installed: tuple[Path, str],
                                       tmp_path: Path) -> None:
        """PORTSAFE_AUTO=1 pytest: patched tests, and no warning that pytest cannot
        rewrite the package the start-up hook imported."""
        _, python = installed
        (tmp_path / "test_picked.py").write_text(textwrap.dedent("""
            import socket
            import portsafe

            def test_picked():
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    port = sock.getsockname()[1]
                low, high = portsafe.ephemeral_port_range()
                assert not low <= port <= high
        """))
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("PORTSAFE", "PYTHONPATH", "PYTEST"))}
        env.update(PORTSAFE_AUTO="1", PORTSAFE_LOCK_DIR=str(tmp_path / "locks"))
        done = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W",
                               "error::pytest.PytestAssertRewriteWarning", "test_picked.py"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "PytestAssertRewriteWarning" not in done.stdout
