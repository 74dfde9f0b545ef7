"""Load the slimta pytest plugin when its entry point is not installed (a source checkout)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("slimta"):
        from slimta.testing import pytest_plugin

        config.pluginmanager.register(pytest_plugin, "slimta")
