"""Fixtures of the emulator suites; helpers live in emu_support.py."""
from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

from emu_support import PAYLOADS, POLICIES  # noqa: E402


@pytest.fixture(params=POLICIES)
def policy(request):
    return request.param


@pytest.fixture(params=PAYLOADS)
def payload(request):
    return request.param
