"""Shared test fixtures: the path to ../shared (skipped on a fresh clone) and tiny HF checkpoints."""
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared():
    """../shared/ next to the checkout: present in CI, absent on a user's fresh clone."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: shared test material is only present in the project's CI")
    return SHARED
