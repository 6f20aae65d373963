"""Test set-up: Triton in interpreter mode without a GPU, and the paths to ../shared and to the real MiniLM checkpoint
(tests needing them skip, saying why, on a fresh clone)."""
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in Triton's interpreter on CPU tensors; this must be set
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton, hence here

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# The real all-MiniLM-L6-v2 (README, "Encoders": two commands fetch it from PyPI); .ci/run fetches it.
MINILM = Path(os.environ.get("MINILM_DIR") or Path(__file__).resolve().parents[1] / "checkpoints" / "all-MiniLM-L6-v2")


@pytest.fixture
def shared():
    """../shared/ next to the checkout: present in CI, absent on a user's fresh clone."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found: shared test material is only present in the project's CI")
    return SHARED


@pytest.fixture
def minilm():
    """The real all-MiniLM-L6-v2 checkpoint directory ($MINILM_DIR or checkpoints/all-MiniLM-L6-v2)."""
    if not (MINILM / "model.safetensors").is_file():
        pytest.skip(f"{MINILM} not found: fetch all-MiniLM-L6-v2 as the README's 'Encoders' section says, or set "
                    f"MINILM_DIR")
    return MINILM
