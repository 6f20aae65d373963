"""Training: typed run config, torchrun + FSDP2 loop with accumulation, F1 evaluation, resumable checkpoints."""
from train.config import RunConfig, load_config
from train.loop import train

__all__ = ["RunConfig", "load_config", "train"]
