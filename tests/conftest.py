"""Fixtures shared by all tests."""

import pytest


@pytest.fixture(params=["numba", "c"])
def backend(request) -> str:
    """Each compiled backend in turn."""
    return request.param
