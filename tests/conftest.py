"""Fixtures shared by every suite: one Ray instance per test session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session():
    """Ray, started once for the whole session (``ray.init(num_cpus=2)``) by
    the first test that needs it; the runners reuse an initialised Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
