"""Shared fixtures: a tiny valid environment for trace tests."""
import pytest

from tiny_env import make_tiny_env


@pytest.fixture
def tiny_env():
    return make_tiny_env()
