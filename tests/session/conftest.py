"""Fixtures of the session tests: a memory:// URL and a responder answering on it."""

from __future__ import annotations

import uuid

import pytest
from session_responder import Responder


@pytest.fixture
def url():
    return f"memory://session-{uuid.uuid4().hex}"


@pytest.fixture
def responder(url):
    r = Responder(url)
    yield r
    r.close()
