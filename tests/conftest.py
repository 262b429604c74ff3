"""Shared test set-up."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(autouse=True)
def quiet_pytest_asyncio(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner pytester runs have no ini of ours: silence pytest-asyncio's loop-scope warning."""
    if "pytester" not in request.fixturenames:
        return
    request.getfixturevalue("pytester")  # it clears PYTEST_ADDOPTS: set ours after
    if importlib.util.find_spec("pytest_asyncio") is not None:
        monkeypatch.setenv("PYTEST_ADDOPTS", "-o asyncio_default_fixture_loop_scope=function")
