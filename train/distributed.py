"""Processes and sharding: the process group (NCCL on CUDA, gloo on CPU), FSDP2 wrapping of the classifier, and
the precision the hardware computes fastest in."""
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed._composable import checkpoint
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


@dataclass
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    path = Path("/proc/cpuinfo")
    text = path.read_text() if path.is_file() else ""
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def native_bf16() -> bool:
    """Whether this CPU has bf16 matrix-product instructions (AVX512-BF16 or AMX) that torch's kernels use. They
    make bf16 possible, not faster: on some such CPUs bf16 is ~3x float32, on others slower (use_bf16 measures)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512") and bool(
        {"avx512_bf16", "amx_bf16"} & cpu_flags())


def use_bf16(setting, device: torch.device, timings=None) -> bool:
    """train.bf16: true / false as set; auto: bf16 autocast on a CUDA device that has it; on a CPU, the faster of
    the two by `timings()` -> (float32 seconds, bf16 seconds) of the same work, float32 without a timing or
    without native bf16 products (there bf16 crawls: not worth timing)."""
    if setting != "auto":
        return bool(setting)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if timings is None or not native_bf16():
        return False
    float32, bf16 = timings()
    return bf16 < float32


def init_distributed() -> Dist:
    """Join the torchrun process group if there is one (WORLD_SIZE > 1); one plain process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and device.type == "cuda":
        dist.init_process_group("nccl", device_id=device)
    elif world_size > 1:
        dist.init_process_group("gloo")
    return Dist(rank=int(os.environ.get("RANK", 0)), world_size=world_size, device=device)


def shutdown(d: Dist) -> None:
    if d.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum over ranks in place (a no-op on one process)."""
    if d.world_size > 1:
        dist.all_reduce(tensor)
    return tensor


def all_gather_lists(items: list, d: Dist) -> list:
    """The concatenation of every rank's list, in rank order."""
    if d.world_size == 1:
        return items
    gathered = [None] * d.world_size
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()


def prepare_model(classifier: torch.nn.Module, d: Dist, bf16: bool, activation_checkpointing: bool,
                  compile_blocks: bool = False):
    """Per block: activation checkpointing, torch.compile, then FSDP2 (per block and at the root) on several ranks.

    Compute runs in bf16 (when asked) while gradients are reduced in float32. Parameter names do not change,
    so checkpoints written on N ranks load on any other number.
    """
    blocks = classifier.model.layers
    for block in blocks:
        if activation_checkpointing:
            checkpoint(block)
        if compile_blocks:
            block.compile()
    if d.world_size == 1:
        return classifier
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    return fully_shard(classifier, mp_policy=policy)
