"""The benchmark compares like with like: every configuration trains on the same examples, in its own batches."""
import argparse

from train.commands.benchmark import CONFIGS, MEGABATCH, batches


def test_configurations_see_the_same_examples_in_warmup_and_in_timed_steps():
    data = [[str(i), list(range(1, 2 + i % 37)), i % 2] for i in range(MEGABATCH * 8)]
    args = argparse.Namespace(batch_size=8, warmup=3, steps=10, max_length=128)
    runs = {name: batches(name, data, 0, args) for name in CONFIGS}
    for name, run in runs.items():
        warmup, timed = run[: args.warmup], run[args.warmup:]
        for part, reference in [(warmup, runs["ours, padded"][:3]), (timed, runs["ours, padded"][3:])]:
            assert sorted(i for b in part for i in b["ids"]) == sorted(i for b in reference for i in b["ids"]), name
        assert len(timed) == args.steps and all(len(b["labels"]) == args.batch_size for b in run), name
    padding = {name: sum(int((b["attention_mask"] == 0).sum()) for b in run) for name, run in runs.items()}
    assert padding["transformers + PEFT"] > 2 * padding["ours, padded"]  # random order pads far more
    rows = {name: sum(len(b["input_ids"]) for b in run) for name, run in runs.items()}
    assert rows["ours, packed"] < rows["ours, padded"] / 2  # packed rows hold several examples
