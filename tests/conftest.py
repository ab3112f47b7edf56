"""Shared fixtures for the whole test suite."""

from __future__ import annotations

import pytest

from tempstop_pipelines.env import telemetry_off

# Telemetry off (every switch of pipelines/telemetry.env) before any library that phones home
# is imported by a test module.
telemetry_off()

#: Sizes of the session demo dataset: 2 quadruples = 8 clips per split.
TINY_DEMO = {"train_quadruples": 2, "val_quadruples": 2, "test_quadruples": 2, "workers": 1, "seed": 0}


@pytest.fixture(scope="session")
def tiny_demo_config():
    """The :class:`DemoConfig` that made ``tiny_demo_root``."""
    from tempstop.config import DemoConfig

    return DemoConfig(**TINY_DEMO)


@pytest.fixture(scope="session")
def tiny_demo_root(tmp_path_factory, tiny_demo_config):
    """A tiny demo dataset made by the real generator: ``<root>/{train,val,test}/``.

    8 clips per split (2 quadruples), 96 px, 32 frames, train clips with 3 captions.
    Read-only for tests: copy it before modifying anything.
    """
    from tempstop.data.demo import generate_demo

    root = tmp_path_factory.mktemp("tiny_demo")
    generate_demo(root, tiny_demo_config, progress=False)
    return root
