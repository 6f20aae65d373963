"""Test set-up: Triton in interpreter mode without a GPU, and the path to ../shared (skipped on a fresh clone)."""
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in Triton's interpreter on CPU tensors; this must be set
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton, hence here

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared():
    """../shared/ next to the checkout: present in CI, absent on a user's fresh clone."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: shared test material is only present in the project's CI")
    return SHARED
