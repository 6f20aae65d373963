"""Test set-up: Triton in interpreter mode without a GPU, the paths to ../shared and to the real MiniLM checkpoint
(tests needing them skip, saying why, on a fresh clone), and a trained two-fold recipe shared by the tests of
what uses one (scoring, exporting)."""
import os
from pathlib import Path

import pytest
import torch
import yaml

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


@pytest.fixture(scope="session")
def trained_recipe(tmp_path_factory):
    """A trained two-fold QC recipe on the demo data (with its translations), weighted vote, and its submission."""
    from train.commands.demo import DEMO_DATA, build_model  # imported here: after TRITON_INTERPRET is set
    from train.main import main

    tmp = tmp_path_factory.mktemp("recipe")
    cfg = {"run_dir": str(tmp / "run"), "model": {"path": str(tmp / "model"), "dtype": "float32"},
           "lora": {"r": 4, "alpha": 8},
           "data": {"translations": str(DEMO_DATA / "translations.jsonl"), "n_folds": 3, "max_length": 32},
           "train": {"lr": 1e-3, "max_steps": 2, "batch_size": 8, "bf16": False},
           "stages": [{"name": "QC", "folds": [0, 1], "data": {"train": str(DEMO_DATA / "train_QC.txt"),
                                                               "task": "QC"}}],
           "predict": {"files": [str(DEMO_DATA / "test_QC.txt")], "ensemble": "weighted_vote"}}
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(cfg))
    build_model(tmp / "model")
    assert main([str(tmp / "recipe.yaml")]) == 0
    return tmp / "run"


@pytest.fixture
def minilm():
    """The real all-MiniLM-L6-v2 checkpoint directory ($MINILM_DIR or checkpoints/all-MiniLM-L6-v2)."""
    if not (MINILM / "model.safetensors").is_file():
        pytest.skip(f"{MINILM} not found: fetch all-MiniLM-L6-v2 as the README's 'Encoders' section says, or set "
                    f"MINILM_DIR")
    return MINILM
