"""Test set-up of the sample project.

A project that installs ``slimta[test]`` gets the fixtures
(``smtp_conversation``, ``recording_relay``, ``queue_clock``...) from
slimta's pytest plugin without doing anything.  The lines below only
matter when slimta is used from a source checkout, without its entry
point installed.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Register slimta's fixtures unless its entry point already did."""
    if not config.pluginmanager.has_plugin("slimta"):
        from slimta.testing import pytest_plugin

        config.pluginmanager.register(pytest_plugin, "slimta")
