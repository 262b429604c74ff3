"""The docs runner (docs/_support/docrunner.py) and the rules the docs keep."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_support"))

import docrunner  # noqa: E402 - found through the line above

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*skip:\s*(?P<args>.*?)\s*-->")


class TestDocRules:
    """What every Markdown file that the suite runs must keep to."""

    def test_every_skip_gives_a_reason(self):
        """A skipped block says why in the directive, so the report shows it."""
        for path in DOCS:
            for match in SKIP.finditer(path.read_text(encoding="utf-8")):
                args = match.group("args")
                if args.startswith("end"):
                    continue
                assert re.fullmatch(r'(next|start)\s+(".+"|if\(.+\))', args), (
                    f"{path.name}: '<!-- skip: {args} -->' needs a reason: "
                    '<!-- skip: next "why it cannot run here" -->')

    def test_readme_set_up_block_is_skipped_and_two_lines(self):
        """CI runs the README's first sh block itself; the docs tests skip it."""
        text = (ROOT / "README.md").read_text(encoding="utf-8")
        match = re.search(r"(?P<before>.*?)^```sh\n(?P<body>.*?)^```$", text, re.S | re.M)
        assert match is not None
        assert len(match.group("body").splitlines()) == 2
        assert SKIP.findall(match.group("before").splitlines()[-1])

    def test_every_page_is_in_the_site_navigation(self):
        """Each docs/*.md page is in mkdocs.yml's nav (strict mode only logs a page left
        out, so the site would silently lack it)."""
        nav = set(re.findall(r"^\s+- [^:]+: (\S+\.md)$",
                             (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M))
        pages = {path.name for path in (ROOT / "docs").glob("*.md")}
        assert pages <= nav, f"not in mkdocs.yml's nav: {sorted(pages - nav)}"

    def test_docs_are_collected_by_default(self):
        """`pytest` with no arguments runs the docs: they are in testpaths."""
        pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        line = next(li for li in pyproject.splitlines() if li.startswith("testpaths"))
        assert '"docs"' in line
        assert '"README.md"' in line


class TestRunnerParts:
    """The pieces of the runner that decide what a block means."""

    def test_console_commands(self):
        """Only `$ ` lines are commands; a trailing backslash continues one."""
        text = "$ portsafe list\n PORT PID\n$ portsafe who \\\n  8080\noutput\n"
        assert docrunner.console_commands(text) == ["portsafe list", "portsafe who \\\n  8080"]

    def test_file_comment(self):
        """A block opening with `# name.py` is a file; other comments are code."""
        assert docrunner.FILE_COMMENT.match("# test_cli.py\nimport x\n").group("name") == (
            "test_cli.py")
        assert docrunner.FILE_COMMENT.match("# before\nimport x\n") is None
        assert docrunner.FILE_COMMENT.match("# a test_cli.py file\n") is None

    def test_child_env_is_private(self, tmp_path):
        """Shell blocks get a marker of their own (and a lock directory where reservations
        are lock files), and this interpreter's tools first."""
        env = docrunner.child_env(tmp_path, "locks-x")
        assert env[docrunner.BLOCK_MARKER] == str(tmp_path / "locks-x")
        if docrunner.LOCK_FILES:
            assert env["PORTSAFE_LOCK_DIR"] == str(tmp_path / "locks-x")
        else:  # Linux's names ignore the setting, and warn that it is set
            assert env.get("PORTSAFE_LOCK_DIR") == os.environ.get("PORTSAFE_LOCK_DIR")
        first, second = env["PATH"].split(":")[:2]
        assert first == str(docrunner.BIN)
        assert second == str(Path(sys.executable).parent)

    def test_generated_certificate_serves_tls(self, tmp_path):
        """The throw-away server.pem holds a key and a certificate `openssl s_server` takes."""
        import shutil
        import socket
        import ssl
        import subprocess

        import portsafe

        if shutil.which("openssl") is None:
            pytest.skip("openssl is not installed")
        docrunner._make_certificate(tmp_path / "server.pem")
        with portsafe.reserve_port() as r:
            server = subprocess.Popen(
                ["openssl", "s_server", "-accept", f"127.0.0.1:{r.port}", "-www", "-quiet"],
                cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            try:
                portsafe.wait_for_port(r, timeout=30, process=server)
                context = ssl.create_default_context(cafile=str(tmp_path / "server.crt"))
                context.check_hostname = False
                with socket.create_connection(("127.0.0.1", r.port), timeout=30) as raw, \
                        context.wrap_socket(raw) as tls:
                    assert tls.getpeercert()["subject"] == ((("commonName", "localhost"),),)
            finally:
                server.terminate()
                server.wait()


class TestBenchChart:
    """The site shows the bench's chart when it has been drawn, and says how otherwise."""

    def test_placeholder(self, tmp_path):
        """Without docs/assets/bench.svg the page says how to draw it; with it, shows it."""
        import mkdocs_hooks

        page = f"# Benchmarks\n\n{mkdocs_hooks.PLACEHOLDER}\n"
        config = {"docs_dir": str(tmp_path)}
        assert "nox -s bench" in mkdocs_hooks.on_page_markdown(page, None, config, None)
        (tmp_path / "assets").mkdir()
        (tmp_path / mkdocs_hooks.CHART).write_text("<svg/>")
        shown = mkdocs_hooks.on_page_markdown(page, None, config, None)
        assert f"]({mkdocs_hooks.CHART})" in shown
        assert mkdocs_hooks.PLACEHOLDER in (ROOT / "docs" / "bench.md").read_text()


class TestReference:
    """The API reference: functions first and errors last, Sphinx roles as links.

    These need griffe, which the docs build installs (`pip install -e '.[docs]'`); the
    test environment skips them.
    """

    def test_portsafe_functions_first_errors_last(self):
        """The expansion of ``<!-- api: portsafe -->`` puts every function before every
        class and every error after them, and leaves no public name out."""
        api_layout = pytest.importorskip("api_layout", exc_type=ImportError)  # griffe

        import portsafe

        text = api_layout.api_markdown("portsafe", ["reserve_port", "listen"])
        shown = re.findall(r"^::: portsafe\.(\w+)$", text, re.M)
        assert set(shown) == set(portsafe.__all__) - {"__version__"}
        assert shown[:2] == ["reserve_port", "listen"]
        kinds = [api_layout.kind_of(api_layout.lookup(f"portsafe.{name}"))
                 for name in shown]
        assert kinds == sorted(kinds, key=api_layout.KINDS.index)
        assert kinds[0] == "Functions"
        assert kinds[-1] == "Errors"
        assert "NoFreePortError" in [n for n, k in zip(shown, kinds, strict=True)
                                     if k == "Errors"]

    def test_fixtures_and_stdlib_based_errors(self):
        """Fixtures get their own section; an error based on the standard library's
        exception (socket_helper.ResourceDenied is a unittest.SkipTest) is an error."""
        api_layout = pytest.importorskip("api_layout", exc_type=ImportError)  # griffe

        assert api_layout.kind_of(api_layout.lookup(
            "portsafe.pytest_plugin.reserved_tcp_port")) == "Fixtures"
        assert api_layout.kind_of(api_layout.lookup(
            "portsafe.socket_helper.ResourceDenied")) == "Errors"

    def test_roles_become_links_or_code(self):
        """A role naming a public object links to it, relative names included; one
        naming a private helper is code; a ``~`` shortens the title."""
        griffe = pytest.importorskip("griffe")
        import griffe_docstrings

        pkg = griffe.load("portsafe", search_paths=[str(ROOT / "src")],
                          resolve_aliases=False)
        public = griffe_docstrings.public_paths(pkg, ["portsafe", "portsafe.script_helper"])
        handoff = pkg["_net.handoff.listen"]
        convert = griffe_docstrings.convert
        assert convert(":func:`listen`", handoff, public) == "[`listen()`][portsafe.listen]"
        assert convert(":class:`~portsafe.Reservation`", handoff, public) == (
            "[`Reservation`][portsafe.Reservation]")
        assert convert(":func:`_private_helper`", handoff, public) == "`_private_helper()`"
        assert convert(":mod:`portsafe.script_helper`", handoff, public) == (
            "[`portsafe.script_helper`][portsafe.script_helper]")


DOC = '''# A document

```python
x = 41
```

```python
assert x + 1 == 42
```

```sh
echo "lock dir: $PORTSAFE_LOCK_DIR"; exit 3
```

<!-- skip: next "cannot run here" -->
```python
raise RuntimeError("skipped, never run")
```

```make
all:
\techo never
```

```console
$ false
nothing found is exit 1, which passes
$ portsafe --version
```

```console
$ sh -c 'exit 2'
```

```python
# test_inner.py
def test_inner():
    assert True
```

```ini
portsafe_patch_asyncio = true
```

```python
assert x == 41
```
'''


class TestRunnerOutcomes:
    """A document with every kind of block gets the outcome each block deserves."""

    def run(self, pytester, *args):
        pytester.makeconftest(
            "import sys\n"
            f"sys.path.insert(0, {str(ROOT / 'docs' / '_support')!r})\n"
            "from pathlib import Path\n"
            "import docrunner\n"
            "pytest_collect_file = docrunner.pytest_collect_file(\n"
            "    docrunner.make_sybil(Path(__file__).parent, ['*.md']))\n")
        pytester.makefile(".md", doc=DOC)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", *args)

    def test_outcomes(self, pytester):
        """Code passes, failing sh/console/unknown blocks fail, the skipped one skips."""
        result = self.run(pytester)
        result.assert_outcomes(passed=7, failed=3, skipped=1)  # the directive is one
        result.stdout.fnmatch_lines(["*cannot run here*"])
        result.stdout.fnmatch_lines(["*no runner for ```make blocks*"])

    def test_outcomes_under_xdist(self, pytester):
        """Split over two workers, later blocks still see what earlier ones defined."""
        pytest.importorskip("xdist")
        result = self.run(pytester, "-n", "2", "--dist", "load")
        result.assert_outcomes(passed=7, failed=3, skipped=1)  # the directive is one
