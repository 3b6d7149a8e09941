"""Fixtures shared by every suite: one Ray instance per test session; a
migration copier thread held mid-copy."""
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


@pytest.fixture
def held_copier(monkeypatch):
    """The migration copier thread (cluster.dataplane.CopyInFlight) stops in
    its first chunk until ``go`` is set: (in_copy, go). Set at teardown too,
    so that no copier stays stuck after a failed test."""
    import threading

    import cluster.dataplane as D
    in_copy, go = threading.Event(), threading.Event()
    real = D.copy_rows

    def held(*args):
        if threading.current_thread().name.startswith("migrate-copy") and not in_copy.is_set():
            in_copy.set()
            assert go.wait(30), "the copier was never let go"
        real(*args)

    monkeypatch.setattr(D, "copy_rows", held)
    yield in_copy, go
    go.set()
