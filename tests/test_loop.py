"""The training loop on a tiny random model: schedules, outputs, exact resume, SIGTERM, NaN, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from data.batching import collate_padded
from model.adapters import load_adapters
from model.lora import ENCODER_TARGETS
from train.checkpoint import latest_checkpoint
from train.config import ConfigError, TrainSection, save_config
from train.distributed import Dist
from train.loop import (
    Data,
    evaluate,
    load_data,
    lr_at,
    precision_timings,
    read_data_files,
    run_classifier,
    selection_score,
    train,
)
from train.main import main
from train.metrics import PER_LANGUAGE
from train.predict import predict_fold
from train.progress import MetricsLog, plot, text_curve

from fixtures import SGD_ATOL, SGD_LR, make_encoder_checkpoint, make_qi_records, sgd, tiny_config

ROOT = Path(__file__).resolve().parents[1]
ONE = Dist(rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices run fastest, and most steadily on a shared machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def final_weights(run_dir) -> dict:
    ckpt = sorted((Path(run_dir) / "checkpoints").glob("step-*"))[-1]
    return load_file(ckpt / "adapters.safetensors")


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
    ("cosine", [0.5, 1.0, 1.0, 0.8535534, 0.5, 0.1464466]),
])
def test_schedules_warm_up_then_decay(schedule, expected):
    cfg = TrainSection(lr=1.0, schedule=schedule, warmup_ratio=2 / 6)
    assert [lr_at(s, 6, cfg) for s in range(6)] == pytest.approx(expected)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: 2 epochs of 4 steps, LoRA dropout on (so RNG state matters), a checkpoint per step."""
    tmp = tmp_path_factory.mktemp("loop")
    cfg = reference_config(tmp)
    result = train(cfg)
    return tmp, cfg, result


def reference_config(tmp, run_dir="reference"):
    cfg = tiny_config(tmp, run_dir, epochs=2, save_every=1, eval_every=3, schedule="cosine", warmup_ratio=0.25)
    cfg.lora.dropout = 0.1
    return cfg


def test_run_directory_holds_config_metrics_checkpoints_and_best(reference):
    tmp, cfg, result = reference
    run = Path(cfg.run_dir)
    assert (run / "config.yaml").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    valid_rows = [r for r in rows if r["split"] == "valid"]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    assert [r["step"] for r in valid_rows] == [3, 4, 6, 8]  # every 3 steps and at the end of each epoch
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in train_rows)
    for key in ("loss", "f1", "precision", "recall", "auc", "f1_en", "f1_fr", "tuned_threshold", "all_positive_f1"):
        assert key in valid_rows[0], key
    best = max(valid_rows, key=lambda r: r["f1"])
    assert result.step == best["step"] and result.metrics["f1"] == best["f1"]
    meta = json.loads((run / "best" / "adapters.json").read_text())
    assert meta["step"] == best["step"] and meta["threshold"] == best["tuned_threshold"]
    assert meta["r"] == 4 and meta["base_model"] == cfg.model.path
    assert len(list((run / "checkpoints").glob("step-*"))) == 8  # keep_last=10
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]


def test_resume_after_a_kill_mid_epoch_gives_the_same_weights(reference, tmp_path):
    tmp, cfg, _ = reference
    killed = tmp_path / "killed"
    shutil.copytree(cfg.run_dir, killed)
    for ckpt in (killed / "checkpoints").glob("step-*"):
        if int(ckpt.name[5:]) > 5:  # the run died during step 6 of 8 (epoch 2 of 2, batch 2 of 4)
            shutil.rmtree(ckpt)
    shutil.rmtree(killed / "best")
    resumed = reference_config(tmp, str(killed))
    train(resumed)
    want, got = final_weights(cfg.run_dir), final_weights(killed)
    assert all(torch.equal(want[k], got[k]) for k in want)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # lines logged after the checkpoint were dropped, then redone


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly_then_resumes_exactly(reference, tmp_path):
    tmp, cfg, _ = reference
    run = tmp_path / "preempted"
    save_config(reference_config(tmp, str(run)), tmp_path / "run.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train" / "main.py"), str(tmp_path / "run.yaml")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (run / "checkpoints" / "step-00000001").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert "SIGTERM: stopped after step" in output, output
    stopped = int(output.split("SIGTERM: stopped after step ")[1].split(";")[0])
    assert stopped < 8 and latest_checkpoint(run).name == f"step-{stopped:08d}"

    train(reference_config(tmp, str(run)))
    want, got = final_weights(cfg.run_dir), final_weights(run)
    assert all(torch.equal(want[k], got[k]) for k in want)


def assert_same_updates(want_dir, got_dir) -> None:
    want, got = final_weights(want_dir), final_weights(got_dir)
    for k in want:  # plain SGD steps: order-free to SGD_ATOL (tests/fixtures.py argues it)
        torch.testing.assert_close(got[k], want[k], atol=SGD_ATOL, rtol=0, msg=k)


def test_packed_rows_train_to_the_same_weights_as_padded_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.optim, "AdamW", sgd)
    padded = tiny_config(tmp_path, "padded", max_steps=3, lr=SGD_LR)
    packed = tiny_config(tmp_path, "packed", max_steps=3, lr=SGD_LR)
    packed.data.packing = True
    train(padded)
    train(packed)
    assert_same_updates(padded.run_dir, packed.run_dir)


@pytest.mark.slow
def test_compiled_blocks_train_to_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.optim, "AdamW", sgd)
    eager = tiny_config(tmp_path, "eager", max_steps=2, lr=SGD_LR)
    compiled = tiny_config(tmp_path, "compiled", max_steps=2, compile=True, lr=SGD_LR)
    train(eager)
    counters.clear()
    train(compiled)
    assert counters["stats"]["unique_graphs"] > 0  # the blocks did run compiled
    assert_same_updates(eager.run_dir, compiled.run_dir)


def test_a_bf16_run_stores_its_frozen_weights_in_bf16_with_autocasts_own_updates_and_predictions(tmp_path,
                                                                                                monkeypatch):
    """train.bf16 with float32 weights: training and prediction store the frozen projections in bf16 once; the
    updates and probabilities are those of autocast casting them at every product, bit for bit."""
    stored = tiny_config(tmp_path, "stored", max_steps=3, bf16=True)
    cast = tiny_config(tmp_path, "cast", max_steps=3, bf16=True)
    train(stored)
    records = read_data_files(stored, "valid")
    want = predict_fold(stored, records, 4, "cpu")
    seen = []
    for module in ("train.loop", "train.predict"):
        monkeypatch.setattr(f"{module}.store_frozen", lambda model, dtype: seen.append(dtype))
    train(cast)
    weights = final_weights(cast.run_dir)
    assert all(torch.equal(weights[k], v) for k, v in final_weights(stored.run_dir).items())
    assert predict_fold(cast, records, 4, "cpu") == want
    assert seen == [torch.bfloat16] * 2  # both would have stored them


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = []

    def poisoned(logits, labels, *args):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr("train.loop.classification_loss", poisoned)
    cfg = tiny_config(tmp_path, save_every=1)
    with pytest.raises(FloatingPointError, match="step 3: loss is nan .*: stopping without updating the weights; "
                                             "the last good checkpoint is .*step-00000002"):
        train(cfg)
    ckpts = sorted(p.name for p in (Path(cfg.run_dir) / "checkpoints").iterdir())
    assert ckpts == ["step-00000001", "step-00000002"]
    assert all(t.isfinite().all() for t in final_weights(cfg.run_dir).values())


def test_init_from_starts_from_another_runs_adapters(reference, tmp_path):
    tmp, cfg, _ = reference
    follow = tiny_config(tmp, str(tmp_path / "follow"))
    follow.init_from = str(Path(cfg.run_dir) / "best")
    want = load_file(Path(cfg.run_dir) / "best" / "adapters.safetensors")
    got = {n: p for n, p in run_classifier(follow, torch.device("cpu")).named_parameters() if p.requires_grad}
    assert got.keys() == want.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_resume_with_other_result_changing_settings_is_refused_naming_each(reference, tmp_path):
    tmp, cfg, _ = reference
    copy = tmp_path / "copy"
    shutil.copytree(cfg.run_dir, copy)
    changed = reference_config(tmp, str(copy))
    changed.train.lr, changed.lora.r, changed.data.train = 0.5, 8, [str(tmp / "valid.jsonl")]
    before = (copy / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"config.yaml: resuming with other settings .*: lora.r \(4 -> 8\), "
                                          r"data.train \(\[.*train.jsonl'\] -> \[.*valid.jsonl'\]\), "
                                          r"train.lr \(0.01 -> 0.5\)"):
        train(changed)
    assert (copy / "config.yaml").read_text() == before  # the run's own config is left as it was
    accumulated = reference_config(tmp, str(copy))
    accumulated.train.grad_accum = 2  # how a step is split may change, but not how many examples it has
    with pytest.raises(ConfigError, match="written with 8 examples per step, this config has 16"):
        train(accumulated)
    bookkeeping = reference_config(tmp, str(copy))
    bookkeeping.train.eval_every, bookkeeping.train.keep_last, bookkeeping.train.save_every = 1, 3, 2
    assert train(bookkeeping).step > 0  # evaluation and checkpoint periods may change


def test_a_second_run_into_a_busy_directory_fails_at_once_naming_the_holder(reference, tmp_path):
    tmp, _, _ = reference
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from train.rundir import RunLock; "
                               "lock = RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
                               str(tmp_path / "busy")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        began = time.perf_counter()
        with pytest.raises(ConfigError, match=rf"run_dir .*busy: in use by process {holder.pid} on "):
            train(tiny_config(tmp, str(tmp_path / "busy")))
        assert time.perf_counter() - began < 5
        assert not (tmp_path / "busy" / "config.yaml").exists()
    finally:
        holder.kill()  # SIGKILL: the OS drops the lock with the process
        holder.wait()
    assert train(tiny_config(tmp, str(tmp_path / "busy"), max_steps=1)).step == 1


def test_fresh_run_refuses_a_directory_with_checkpoints(reference):
    tmp, cfg, _ = reference
    cfg = reference_config(tmp)
    cfg.resume = False
    with pytest.raises(ConfigError, match="set resume=true"):
        train(cfg)


def test_cli_names_bad_keys_and_missing_files(reference, tmp_path, capsys):
    tmp, cfg, _ = reference
    save_config(cfg, tmp_path / "run.yaml")
    assert main([str(tmp_path / "run.yaml"), "train.lr_rate=1"]) == 1
    assert "unknown config key 'train.lr_rate'; did you mean 'train.lr'?" in capsys.readouterr().err
    assert main([str(tmp_path / "run.yaml"), "data.train=nowhere.jsonl", f"run_dir={tmp_path / 'x'}"]) == 1
    assert "data.train: file not found: nowhere.jsonl" in capsys.readouterr().err


def test_rerunning_a_finished_run_does_no_work_and_rewrites_the_same_curves(reference, capsys):
    tmp, cfg, result = reference
    curves = (Path(cfg.run_dir) / "metrics.txt").read_text()
    assert train(cfg) == result
    assert "step 1/" not in capsys.readouterr().err
    assert (Path(cfg.run_dir) / "metrics.txt").read_text() == curves


def test_the_text_curve_has_a_line_per_evaluation_with_its_values(reference):
    _, cfg, _ = reference
    rows = MetricsLog(Path(cfg.run_dir) / "metrics.jsonl").read()
    valid = [r for r in rows if r["split"] == "valid"]
    lines = (Path(cfg.run_dir) / "metrics.txt").read_text().splitlines()
    assert lines[0].split()[:5] == ["step", "loss", "f1", "auc", "all_positive_f1"] and len(lines) == 1 + len(valid)
    for line, r in zip(lines[1:], valid):
        fields = line.split()
        assert int(fields[0]) == r["step"] and float(fields[3]) == pytest.approx(r["auc"], abs=1e-4)
        assert fields[-1].count("#") == round(min(max(r["auc"] - 0.5, 0), 0.5) * 80)
    assert text_curve(rows[:1] + [dict(valid[0], auc=1.0)]).splitlines()[1].endswith("|" + "#" * 40)


def test_plot_is_a_png_of_the_logged_curves(reference, tmp_path):
    pytest.importorskip("matplotlib")
    _, cfg, _ = reference
    assert "metrics.png" in plot(MetricsLog(Path(cfg.run_dir) / "metrics.jsonl"), tmp_path)
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_head_from_the_lms_answer_rows_is_evaluated_before_the_first_update(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=1)
    cfg.data.template, cfg.model.head_init = "question", "lm_answer"
    start = run_classifier(cfg, torch.device("cpu")).score.weight
    embeddings = load_file(Path(cfg.model.path) / "model.safetensors")["model.embed_tokens.weight"]
    vocab = json.loads((Path(cfg.model.path) / "tokenizer.json").read_text())["model"]["vocab"]
    assert torch.equal(start, embeddings[[vocab["no"], vocab["yes"]]])
    result = train(cfg)
    assert 0 <= result.step0["auc"] <= 1
    rows = [json.loads(line) for line in (Path(cfg.run_dir) / "metrics.jsonl").open()]
    assert [(r["step"], r["split"]) for r in rows][:2] == [(0, "valid"), (1, "train")]
    cfg.data.template = "plain"
    with pytest.raises(ConfigError, match="lm_answer reads the LM's answer after a question"):
        cfg.check()


def joint_config(tmp, run_dir="joint", **train):
    cfg = tiny_config(tmp, run_dir, **train)
    qi = make_qi_records(tmp / "train_qi.jsonl", 32, seed=3)
    cfg.data.train, cfg.data.valid, cfg.data.fold, cfg.data.n_folds = [cfg.data.train[0], str(qi)], "", 0, 2
    cfg.data.template, cfg.data.max_length = "question", 32
    return cfg


def test_a_joint_model_is_validated_per_task_as_each_task_alone(tmp_path):
    cfg = joint_config(tmp_path)
    model = run_classifier(cfg, torch.device("cpu"))
    joint = load_data(cfg, "qwen3")
    assert {i.split(":")[0] for i in joint.tasks} == {"QC", "QI"} and set(joint.tasks.values()) == {"QC", "QI"}
    metrics, probs = evaluate(model, joint, cfg, ONE)
    for task in ("QC", "QI"):
        alone = Data(joint.train, [e for e in joint.valid if joint.tasks[e.id] == task], joint.languages, joint.tasks,
                     joint.pad_id, set())
        want, want_probs = evaluate(model, alone, cfg, ONE)
        assert all(metrics[f"{task}_{k}"] == pytest.approx(v, abs=1e-6) for k, v in want.items()
                   if not k.startswith(PER_LANGUAGE) and k != "loss")
        assert all(probs[i] == pytest.approx(p, abs=1e-6) for i, p in want_probs.items())
    assert metrics["task_mean_f1"] == pytest.approx((metrics["QC_f1"] + metrics["QI_f1"]) / 2)
    plain = joint_config(tmp_path, "plain")
    plain.data.template = "plain"
    with pytest.raises(ConfigError, match="joint stage needs data.template: question"):
        load_data(plain, "qwen3")


def test_a_batch_mixing_tasks_lowers_both_tasks_loss(tmp_path):
    cfg = joint_config(tmp_path, epochs=6)
    data = load_data(cfg, "qwen3")
    probe = replace(data, valid=data.train)  # loss on the training rows, per task

    def task_losses(model):
        model.eval()
        out = {}
        with torch.no_grad():
            for task in ("QC", "QI"):
                batch = collate_padded([e for e in probe.valid if data.tasks[e.id] == task], data.pad_id)
                logits = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
                out[task] = float(torch.nn.functional.cross_entropy(logits, batch["labels"]))
        return out

    torch.manual_seed(cfg.train.seed)
    before = task_losses(run_classifier(cfg, torch.device("cpu")))
    train(cfg)
    after_model = run_classifier(cfg, torch.device("cpu"))
    load_adapters(after_model, Path(cfg.run_dir) / "checkpoints" / sorted(
        p.name for p in (Path(cfg.run_dir) / "checkpoints").iterdir())[-1])
    after = task_losses(after_model)
    assert after["QC"] < before["QC"] and after["QI"] < before["QI"], (before, after)


def test_token_budget_micro_batches_make_the_same_updates_and_resume_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.optim, "AdamW", sgd)
    steps = dict(batch_size=4, grad_accum=2, max_steps=4, save_every=1, lr=SGD_LR)
    rows = tiny_config(tmp_path, "rows", **steps)
    train(rows)
    for budget in (96, 128):  # rows of <= 16 tokens: micro-batches of 6 + 2 or 8 examples, not the 4 + 4 by count
        tokens = tiny_config(tmp_path, f"tokens{budget}", **steps)
        tokens.data.max_tokens = budget
        train(tokens)
        assert_same_updates(rows.run_dir, tokens.run_dir)
    killed = tmp_path / "killed"
    shutil.copytree(tokens.run_dir, killed)
    for ckpt in (killed / "checkpoints").glob("step-*"):
        if int(ckpt.name[5:]) > 2:
            shutil.rmtree(ckpt)
    resumed = tiny_config(tmp_path, "killed", **steps)
    resumed.data.max_tokens, resumed.resume = 128, True
    train(resumed)
    want, got = final_weights(tokens.run_dir), final_weights(killed)
    assert all(torch.equal(want[k], got[k]) for k in want)  # the same sums again on the same CPU: exact
    small = tiny_config(tmp_path, "small")
    small.data.max_tokens = 8
    with pytest.raises(ConfigError, match=r"data.max_tokens must hold one example of data.max_length=16 \(16 token"):
        train(small)


def test_shared_prefix_training_with_a_token_budget_resumes_exactly(tmp_path):
    """Group-drawn shared-prefix batches (the category path first) train, split by a token budget, and a run
    killed after step 2 resumes to the uninterrupted run's weights."""
    def config(run_dir):
        cfg = tiny_config(tmp_path, run_dir, batch_size=4, grad_accum=2, max_steps=4, save_every=1)
        cfg.data.share_prefix, cfg.data.suffixes_per_prefix, cfg.data.max_tokens = True, 3, 48
        return cfg

    whole = config("whole")
    result = train(whole)
    assert 0 <= result.metrics["auc"] <= 1 and (Path(whole.run_dir) / "best" / "adapters.json").is_file()
    killed = tmp_path / "killed"
    shutil.copytree(whole.run_dir, killed)
    for ckpt in (killed / "checkpoints").glob("step-*"):
        if int(ckpt.name[5:]) > 2:
            shutil.rmtree(ckpt)
    train(config("killed"))
    want, got = final_weights(whole.run_dir), final_weights(killed)
    assert all(torch.equal(want[k], got[k]) for k in want)
    packed = config("packed")
    packed.data.packing = True
    with pytest.raises(ConfigError, match="data.packing: shared-prefix rows"):
        train(packed)


def test_precision_timings_time_both_precisions_and_leave_no_gradient(tmp_path):
    cfg = tiny_config(tmp_path)
    classifier = run_classifier(cfg, torch.device("cpu"))
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    data = load_data(cfg, classifier.model.config.model_type)
    float32, bf16 = precision_timings(classifier, collate_padded(data.train[:4], data.pad_id), ONE, repeats=1)
    assert float32 > 0 and bf16 > 0
    assert all(p.grad is None for p in classifier.parameters())
    after = classifier.state_dict()  # the bf16 timing's bf16 weights are gone again
    assert all(after[k].dtype == v.dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("share", [False, True])
def test_evaluation_lays_out_shared_prefixes_once_with_each_rows_own_probability(tmp_path, share):
    """Validation always groups (pure saving): its probabilities are those of every example in a padded row, for a
    joint QC + QI model whatever the training layout."""
    cfg = joint_config(tmp_path)
    cfg.data.share_prefix = share
    model = run_classifier(cfg, torch.device("cpu")).eval()
    data = load_data(cfg, "qwen3")
    assert len({e.group for e in data.valid}) < len(data.valid)  # some rows do share a prefix
    _, probs = evaluate(model, data, cfg, ONE)
    with torch.no_grad():
        batch = collate_padded(data.valid, data.pad_id)
        want = dict(zip(batch["ids"], model(batch["input_ids"], batch["attention_mask"]).softmax(-1)[:, 1].tolist()))
    assert probs.keys() == want.keys() and all(probs[i] == pytest.approx(p, abs=1e-6) for i, p in want.items())
    if share:
        shared = tiny_config(tmp_path, "joint_shared", max_steps=2)
        shared.data = replace(cfg.data)
        assert train(shared).metrics["task_mean_f1"] >= 0  # a joint stage trains on shared-prefix rows


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_validation_logs_null_and_chooses_a_defined_score(tmp_path, label, capsys):
    cfg = tiny_config(tmp_path, max_steps=3, batch_size=4, eval_every=1)
    rows = [json.loads(line) for line in Path(cfg.data.valid).open()]
    Path(cfg.data.valid).write_text("".join(json.dumps({**r, "label": label}) + "\n" for r in rows))
    result = train(cfg)

    def no_nan(constant):
        raise AssertionError(f"{constant} in metrics.jsonl: not JSON")

    valid = [r for r in MetricsLog(Path(cfg.run_dir) / "metrics.jsonl").read() if r["split"] == "valid"]
    json.loads((Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()[-1], parse_constant=no_nan)
    assert len(valid) == 3 and all(r["auc"] is None for r in valid)  # one class: AUC undefined
    assert all((r["f1"] is None) == (label == 0) for r in valid)  # F1 undefined without a relevant row
    assert "n/a" in (Path(cfg.run_dir) / "metrics.txt").read_text()
    err = capsys.readouterr().err
    if label == 0:  # chosen by validation loss, said once
        assert err.count("F1 is undefined on this validation set") == 1
        assert result.step == min(valid, key=lambda r: r["loss"])["step"]
    else:
        assert "undefined" not in err and result.metrics["f1"] == max(r["f1"] for r in valid)


def char_tokenizer(model):  # the tiny checkpoint's vocabulary, but every character a token: " no" is two
    from tokenizers import Regex, pre_tokenizers

    from fixtures import word_tokenizer
    vocab = json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]
    word_tokenizer(sorted(vocab, key=vocab.get), pre_tokenizer=pre_tokenizers.Split(Regex("."), "isolated")).save(
        str(model / "tokenizer.json"))


@pytest.mark.parametrize("change, message", [
    (dict(n_folds=40), r"data.n_folds: need 2 <= n_folds <= number of groups \(\d+\), got n_folds=40 in .* at "
                       r"data.group_levels=2"),
    (dict(max_length=8, template="question"), r"data.max_length=8 leaves no room for text in the qwen question "
                                              r"template \(\d+ tokens\)"),
    (dict(head_init="lm_answer", template="question"), r"model.head_init: lm_answer: the tokenizer splits the "
                                                       r"answer ' no' into 3 tokens"),
])
def test_values_the_data_or_model_cannot_take_are_config_errors_naming_the_key(tmp_path, change, message):
    cfg = tiny_config(tmp_path, max_steps=1)
    if "n_folds" in change:
        cfg.data.valid, cfg.data.n_folds = "", change["n_folds"]
    if "max_length" in change:
        cfg.data.max_length = change["max_length"]
    if "head_init" in change:
        char_tokenizer(Path(cfg.model.path))
        cfg.model.head_init, cfg.data.max_length = "lm_answer", 64
    cfg.data.template = change.get("template", "plain")
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_a_joint_model_with_held_out_languages_is_chosen_on_the_seen_rows_of_each_task(tmp_path):
    """The best step of a joint language-held-out run is chosen by the mean over tasks of the seen languages' F1:
    the held-out language's rows, which task_mean_f1 counts, choose nothing."""
    cfg = joint_config(tmp_path)
    model = run_classifier(cfg, torch.device("cpu"))
    joint = load_data(cfg, "qwen3")
    held_out = Data(joint.train, joint.valid, joint.languages, joint.tasks, joint.pad_id, {"fr"})
    metrics, _ = evaluate(model, held_out, cfg, ONE)
    seen = [metrics[f"{task}_seen_f1"] for task in ("QC", "QI")]
    assert metrics["seen_task_mean_f1"] == pytest.approx(sum(seen) / 2)
    assert selection_score(metrics, {"fr"}) == ("seen_task_mean_f1", metrics["seen_task_mean_f1"])
    assert selection_score({**metrics, "seen_task_mean_f1": 0.1, "task_mean_f1": 0.9}, {"fr"})[1] == 0.1
    assert selection_score(metrics, set()) == ("task_mean_f1", metrics["task_mean_f1"])


def test_a_fold_outside_the_language_split_found_in_the_data_is_the_one_fold_error(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=1)  # rows in en and fr: two held-out language groups by default
    cfg.data.valid, cfg.data.split, cfg.data.fold = "", "languages", 2
    with pytest.raises(ConfigError, match=r"data.fold: fold 2 is not in \[-1, 2\): data.split languages has 2 "
                                          r"held-out language groups"):
        train(cfg)


def test_an_encoder_trains_and_predicts_and_refuses_what_is_decoder_only(tmp_path):
    """A tiny BERT through the same loop (folds, evaluation, best/) and prediction (train/predict.py scores the
    validation rows as the run's evaluation did); packing, the question template, the LM-answer head and the
    decoders' LoRA targets are config errors naming the key."""
    cfg = tiny_config(tmp_path, epochs=2)
    cfg.model.path = str(make_encoder_checkpoint(tmp_path / "bert"))
    cfg.lora.targets = list(ENCODER_TARGETS)
    result = train(cfg)
    assert json.loads((Path(cfg.run_dir) / "best" / "adapters.json").read_text())["model_type"] == "bert"
    assert result.metrics["auc"] > 0.5
    records = read_data_files(cfg, "valid")
    probs = predict_fold(cfg, records, 5, "cpu")
    want = json.loads((Path(cfg.run_dir) / "best" / "validation.json").read_text())
    assert want.keys() == probs.keys() and max(abs(probs[i] - want[i]) for i in want) < 1e-5
    for override, key in ((dict(packing=True), "data.packing"), (dict(template="question"), "data.template"),
                          (dict(share_prefix=True), "data.share_prefix")):
        with pytest.raises(ConfigError, match=f"^{key}: .* is for decoders; .* is a bert encoder"):
            run_classifier(replace(cfg, data=replace(cfg.data, **override)), torch.device("cpu"))
    with pytest.raises(ConfigError, match="^model.head_init: 'lm_answer' is for decoders"):
        run_classifier(replace(cfg, model=replace(cfg.model, head_init="lm_answer")), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"^lora.targets: no linear layer named down_proj, q_proj in "
                                          r"EncoderClassifier \(its linear layers: dense, key, query, value\)"):
        run_classifier(replace(cfg, lora=replace(cfg.lora, targets=["q_proj", "down_proj"])), torch.device("cpu"))
