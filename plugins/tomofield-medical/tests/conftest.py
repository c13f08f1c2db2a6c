"""Shared fixtures of the tomofield-medical tests."""

from __future__ import annotations

import pytest

from tomofield import plugins


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Every test sees the plugin registry as installed, whatever the last one did."""
    plugins.reset()
    yield
    plugins.reset()
