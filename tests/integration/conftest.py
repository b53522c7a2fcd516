"""Fixtures of the integration tests: a real local Ray, shared with tests/conftest.py's `ray_cluster`."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_session(ray_cluster):  # noqa: ANN001, ANN201 - ray_cluster yields the ray module
    """The session's local Ray (started once by `ray_cluster`, shut down at the end of the session)."""
    return ray_cluster
