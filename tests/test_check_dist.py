"""tools/check_dist.py: what a release's wheel and sdist must (not) contain."""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEEDUPS = "portsafe/_locking/_speedups.cpython-311-x86_64-linux-gnu.so"


def load_checker():
    spec = importlib.util.spec_from_file_location("check_dist", ROOT / "tools" / "check_dist.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_dist"] = module
    spec.loader.exec_module(module)
    return module


def make_wheel(path: Path, version: str, names: list[str]) -> Path:
    info = f"portsafe-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, "")
        archive.writestr(f"{info}/METADATA", f"Name: portsafe\nVersion: {version}\n\n")
        archive.writestr(f"{info}/entry_points.txt",
                         "[console_scripts]\nportsafe = portsafe._cli.main:main\n\n"
                         "[pytest11]\nportsafe = portsafe.pytest_plugin\n")
    return path


class TestWheelCheck:
    """The wheel carries py.typed, the package and the start-up hook, and nothing else."""

    def test_good_wheel_passes(self, tmp_path):
        """A wheel with the package, py.typed and portsafe-auto.pth has no problems."""
        checker = load_checker()
        version = checker.project_version()
        wheel = make_wheel(tmp_path / f"portsafe-{version}-cp311-cp311-linux_x86_64.whl",
                           version, ["portsafe/__init__.py", "portsafe/py.typed",
                                     "portsafe-auto.pth", SPEEDUPS,
                                     "portsafe/_locking/_speedups.pyi"])
        assert checker.check_wheel(wheel, version) == []

    def test_a_linux_wheel_without_its_compiled_module_fails(self, tmp_path):
        """A Linux wheel whose C module did not build (it would run the Python claim)."""
        checker = load_checker()
        version = checker.project_version()
        wheel = make_wheel(tmp_path / f"portsafe-{version}-cp311-cp311-linux_x86_64.whl",
                           version, ["portsafe/__init__.py", "portsafe/py.typed",
                                     "portsafe-auto.pth", "portsafe/_locking/_speedups.c"])
        problems = checker.check_wheel(wheel, version)
        assert any("no compiled portsafe/_locking/_speedups" in p for p in problems)
        assert any("_speedups.pyi" in p for p in problems)
        assert any("C source" in p for p in problems)

    def test_missing_start_up_hook_fails(self, tmp_path):
        """Without portsafe-auto.pth, auto mode would not reach child processes."""
        checker = load_checker()
        version = checker.project_version()
        wheel = make_wheel(tmp_path / f"portsafe-{version}-py3-none-any.whl", version,
                           ["portsafe/__init__.py", "portsafe/py.typed"])
        assert any("portsafe-auto.pth" in p for p in checker.check_wheel(wheel, version))

    def test_tests_and_missing_marker_fail(self, tmp_path):
        """Tests in the wheel and a missing py.typed are both reported."""
        checker = load_checker()
        version = checker.project_version()
        wheel = make_wheel(tmp_path / f"portsafe-{version}-py3-none-any.whl", version,
                           ["portsafe/__init__.py", "tests/test_x.py"])
        problems = checker.check_wheel(wheel, version)
        assert any("py.typed" in p for p in problems)
        assert any("tests" in p for p in problems)

    def test_version_has_one_source(self):
        """No __version__ literal in the sources: pyproject.toml is the only source."""
        checker = load_checker()
        assert checker.check_sources() == []
        import portsafe

        assert portsafe.__version__ == checker.project_version()
