"""Two gloo processes with FSDP2 train to the same weights as one process, whatever the split of a step.

The runs differ only in the order of float32 additions (sharded reduce-scatter, micro-batch sums), so they are
compared after SGD steps, to SGD_ATOL (tests/fixtures.py argues why not after AdamW steps, and the tolerance).
"""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from model.lora import ENCODER_TARGETS
from train.distributed import cpu_flags, use_bf16
from train.loop import train

from fixtures import SGD_ATOL, SGD_LR, free_port, make_encoder_checkpoint, sgd, tiny_config


def worker(rank, world_size, ports, configs):
    """One rank of a torchrun-like launch: the environment torchrun would set, then train each config (with
    SGD steps, as the process that compares them)."""
    torch.set_num_threads(1)
    torch.optim.AdamW = sgd
    for port, cfg in zip(ports, configs):
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        train(cfg)


def weights(cfg) -> dict:
    return load_file(sorted((Path(cfg.run_dir) / "checkpoints").glob("step-*"))[-1] / "adapters.safetensors")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_match_one_rank_and_accumulation(tmp_path, monkeypatch):
    """2 ranks x batch 4 == 1 rank x batch 8 == 1 rank x batch 2 x accumulation 4, after 4 optimizer steps;
    so does a 1-rank run resumed from the 2-rank run's checkpoint at step 2.

    Also runs, on the same 2 ranks, a bf16 run (bf16 base weights, bf16 autocast and FSDP compute, activation
    checkpointing) that must train to finite weights and evaluate like the others."""
    monkeypatch.setattr(torch.optim, "AdamW", sgd)
    common = dict(epochs=1, clip=0.5, weight_decay=0.01, schedule="linear", warmup_ratio=0.25, save_every=2,
                  lr=SGD_LR)
    sharded = tiny_config(tmp_path, "ranks2_batch4", batch_size=4, **common)
    mixed = tiny_config(tmp_path, "ranks2_bf16", batch_size=4, bf16=True, activation_checkpointing=True, **common)
    mixed.model.dtype = "bfloat16"
    shared = tiny_config(tmp_path, "ranks2_shared", batch_size=4, **common)
    shared.data.share_prefix, shared.data.max_tokens = True, 32  # FSDP over shared-prefix micro-batches
    mp.spawn(worker, args=(2, [free_port(), free_port(), free_port()], [sharded, mixed, shared]), nprocs=2)

    torch.set_num_threads(1)
    one = train(tiny_config(tmp_path, "rank1_batch8", batch_size=8, **common))
    accumulated = tiny_config(tmp_path, "rank1_batch2_accum4", batch_size=2, grad_accum=4, **common)
    train(accumulated)

    reference = weights(tiny_config(tmp_path, "rank1_batch8"))
    shutil.copytree(sharded.run_dir, tmp_path / "resumed_on_1_rank", ignore=shutil.ignore_patterns("step-00000004"))
    resumed = tiny_config(tmp_path, "resumed_on_1_rank", batch_size=8, **common)
    train(resumed)  # the checkpoint of step 2 was written by 2 FSDP ranks
    for other in (sharded, accumulated, resumed):
        got = weights(other)
        worst = max(float((got[k] - reference[k]).abs().max()) for k in reference)
        print(f"{other.run_dir}: max |diff| vs 1 rank x batch 8 = {worst:.2e}")
        for k in reference:
            torch.testing.assert_close(got[k], reference[k], atol=SGD_ATOL, rtol=0, msg=k)
    assert (tmp_path / "ranks2_batch4" / "checkpoints" / "step-00000004").is_dir()
    lora_b = [k for k in reference if k.endswith("lora_B")]
    moved = min(float(reference[k].abs().max()) for k in lora_b)  # B starts at zero
    print(f"every lora_B moved by at least {moved:.2e}")
    assert moved > 10 * SGD_ATOL  # far more than the tolerance: a wrong update would not hide in it
    assert all(t.isfinite().all() for t in weights(mixed).values())
    shared_one = tiny_config(tmp_path, "rank1_shared", batch_size=8, **common)
    shared_one.data.share_prefix = True
    train(shared_one)
    want = weights(shared_one)
    for k, got in weights(shared).items():
        torch.testing.assert_close(got, want[k], atol=SGD_ATOL, rtol=0, msg=k)
    evals = [json.loads(line) for line in (tmp_path / "ranks2_batch4" / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in evals if r["split"] == "valid"][-1]
    assert valid["f1"] == pytest.approx(one.metrics["f1"]) and valid["auc"] == pytest.approx(one.metrics["auc"],
                                                                                          abs=1e-6)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_an_encoder_on_two_ranks_matches_one_rank(tmp_path, monkeypatch):
    """FSDP2 wraps the encoder's blocks as it wraps a decoder's (dropout off: each rank draws its own masks)."""
    monkeypatch.setattr(torch.optim, "AdamW", sgd)  # as the workers do: compared after SGD steps
    common = dict(epochs=1, clip=0.5, save_every=2, lr=SGD_LR)
    model = make_encoder_checkpoint(tmp_path / "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    runs = [tiny_config(tmp_path, name, batch_size=size, **common) for name, size in (("ranks2", 4), ("rank1", 8))]
    for cfg in runs:
        cfg.model.path, cfg.lora.targets = str(model), list(ENCODER_TARGETS)
    mp.spawn(worker, args=(2, [free_port()], runs[:1]), nprocs=2)
    torch.set_num_threads(1)
    train(runs[1])
    got, want = weights(runs[0]), weights(runs[1])
    assert got.keys() == want.keys() and any(k.startswith("bert.encoder.layer.1.") for k in got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=SGD_ATOL, rtol=0, msg=k)
    moved = sorted(float(want[k].abs().max()) for k in want if k.endswith("lora_B"))  # B starts at zero
    print(f"encoder lora_B moved by {moved[0]:.2e} to {moved[-1]:.2e}, median {moved[len(moved) // 2]:.2e}")
    assert moved[len(moved) // 2] > 10 * SGD_ATOL  # most far more than the tolerance: a wrong update would show


@pytest.mark.parametrize("capability, flags, native", [
    ("AVX512", {"avx512f", "avx512_bf16"}, True),
    ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, True),
    ("AVX512", {"avx512f"}, False),  # AVX512 without bf16 instructions
    ("AVX2", {"avx2", "avx512_bf16"}, False),  # ATEN_CPU_CAPABILITY=avx2 emulates an AVX2 host: its kernels rule
    ("AVX2", {"avx2"}, False),
])
@pytest.mark.parametrize("timed", [(1.0, 0.5), (0.5, 1.0)])  # bf16 faster, bf16 slower (as on some AVX512 hosts)
def test_auto_precision_is_the_faster_one_where_bf16_is_native(monkeypatch, capability, flags, native, timed):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr("train.distributed.cpu_flags", lambda: flags)
    cpu, asked = torch.device("cpu"), []
    timings = lambda: asked.append(1) or timed  # noqa: E731
    assert use_bf16("auto", cpu, timings) is (native and timed[1] < timed[0])
    assert asked == ([1] if native else [])  # timed only where bf16 products exist
    assert use_bf16("auto", cpu) is False  # nothing timed: float32
    assert use_bf16(True, cpu, timings) is True and use_bf16(False, cpu, timings) is False


def test_auto_precision_is_bf16_on_a_cuda_device_that_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert use_bf16("auto", torch.device("cuda", 0)) is True


def test_cpu_flags_are_read_from_cpuinfo():
    flags = cpu_flags()
    assert not flags or "fpu" in flags  # every x86 CPU lists fpu; elsewhere the set may be empty
