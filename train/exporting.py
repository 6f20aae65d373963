"""A trained run, or one fold of a recipe, as a model other tools load: a merged Hugging Face checkpoint or a PEFT
adapter, next to the base model's tokenizer with a post-processor that makes a (query, target) pair into the
run's template (data.inputs.pair_processor), id2label / label2id, and a model card (README.md). The directory is
written under a temporary name and renamed when complete."""
import json
import shutil
from pathlib import Path

import torch

from data.inputs import QUESTIONS, SHARED_FIRST_QUESTIONS, model_family, pad_token_id, pair_processor, template
from model.adapters import build_classifier
from model.export import export_merged, export_peft
from model.loading import load_tokenizer
from train.config import DTYPES, ConfigError, RunConfig, run_config, stage_folds
from train.predict import open_fold
from train.recipe import data_tasks, final_stages
from train.scoring import trained_config

LABELS = ["irrelevant", "relevant"]  # label 0, label 1


def chosen_run(cfg: RunConfig, fold: str | None, task: str | None) -> tuple[RunConfig, str]:
    """The run to export and its task: the run itself, or fold `fold` of the recipe's final stage of `task`; a
    choice the directory leaves open must be given (each error names the flag)."""
    if cfg.stages:
        finals = final_stages(cfg)
        task = task or (next(iter(finals)) if len(finals) == 1 else None)
        if task not in finals:
            raise ConfigError(f"--task: the recipe's final stages are for {' and '.join(sorted(finals))}: choose one")
        folds = {f.name: f for f in stage_folds(finals[task])}
        fold = fold if fold is None or fold == "full" or fold.startswith("fold") else f"fold{fold}"
        fold = fold or (next(iter(folds)) if len(folds) == 1 else None)
        if fold not in folds:
            raise ConfigError(f"--fold: stage {finals[task].name} has {', '.join(folds)}: choose one (a merged "
                              f"checkpoint holds one model; `score` ensembles the folds)")
        return run_config(cfg, finals[task], folds[fold]), task
    if fold is not None:
        raise ConfigError(f"--fold: {cfg.run_dir} is a run directory, not a recipe: it has one model")
    tasks = data_tasks(cfg.data)
    task = task or (tasks[0] if len(tasks) == 1 else None)
    if task not in tasks:
        raise ConfigError(f"--task: the run trains {' and '.join(tasks)}: choose the one its template asks about")
    return cfg, task


def export_run(directory, out, fmt: str = "merged", fold: str | None = None, task: str | None = None,
               dtype: str = "float32", force: bool = False, command: str = "") -> Path:
    """Export a run or a recipe's fold (see chosen_run) to `out` as `fmt` ("merged" in `dtype`, or "peft"); an
    existing `out` is replaced only with `force`."""
    out = Path(out)
    if fmt not in ("merged", "peft"):
        raise ConfigError(f"--format must be merged or peft, got {fmt!r}")
    if out.exists() and not force:
        raise FileExistsError(f"{out}: already exists (--force replaces it)")
    run, task = chosen_run(trained_config(directory), fold, task)
    run, best_dir, info, base = open_fold(run, "cpu")
    build_dtype = torch.float32 if fmt == "merged" else DTYPES[run.model.dtype]  # merged exactly, then cast
    classifier = build_classifier(base, info["r"], info["alpha"], 0.0, info["targets"], build_dtype, "cpu",
                                  info["num_labels"], adapters=best_dir).eval()
    tokenizer, family = load_tokenizer(base), model_family(classifier.model.config.model_type)
    question = run.data.template == "question"
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if fmt == "merged":
            export_merged(classifier, tmp, pad_token_id=pad_token_id(tokenizer, family), dtype=DTYPES[dtype],
                          labels=LABELS)
        else:
            export_peft(classifier, tmp, run.model.path or info["base_model"])
        write_tokenizer(tokenizer, family, task if question else None, tmp, target_first(run, task))
        card = model_card(run, info, task, fmt, family, pad_token_id(tokenizer, family), str(out), command)
        (tmp / "README.md").write_text(card)
        if out.exists():
            old = out.with_name(f".old-{out.name}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def target_first(run: RunConfig, task: str) -> bool:
    """Whether the run's rows of `task` put the target first (data.share_prefix: a QC row's category path)."""
    return run.data.share_prefix and task == "QC"


def write_tokenizer(tokenizer, family: str, task: str | None, directory: Path, swapped: bool = False) -> None:
    """tokenizer.json with the template as its pair post-processor (task None: plain, else that task's question;
    `swapped`: the target before the query, still called as (query, target)), and a tokenizer_config.json that
    makes transformers use it as it is: the generic fast tokenizer class, no add_bos_token (with which
    transformers rebuilds the post-processor), the family's pad token."""
    tokenizer.post_processor = pair_processor(tokenizer, family, task, swapped)
    tokenizer.save(str(directory / "tokenizer.json"))
    tpl = template(family)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_input_names": ["input_ids", "attention_mask"],
              "pad_token": tpl.pad, "eos_token": tpl.close, **({"bos_token": tpl.bos} if tpl.bos else {}),
              "padding_side": "right", "clean_up_tokenization_spaces": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def template_text(family: str, task: str, question: bool, swapped: bool = False) -> str:
    """The template a (text, text_pair) call produces, with {query} and {target} for the two texts."""
    tpl = template(family)
    first, second = ("{target}", "{query}") if swapped else ("{query}", "{target}")
    if question:
        before, between, after = (SHARED_FIRST_QUESTIONS if swapped else QUESTIONS)[task]
        return f"{tpl.bos or ''}{before}{first}{between}{second}{after}"
    return f"{tpl.bos or ''}{first}{tpl.separator}{second}{tpl.close}"


def model_card(run: RunConfig, info: dict, task: str, fmt: str, family: str, pad_id: int, where: str,
               command: str) -> str:
    """README.md of an export: what the model reads, how to call it, its threshold and validation metrics."""
    base = run.model.path or info["base_model"]
    shown = template_text(family, task, run.data.template == "question", target_first(run, task)).replace("\n", "\\n")
    clean = ("lowercase, and " if run.data.lowercase else "") + "collapse runs of whitespace to one space"
    translation = ("Trained with translation augmentation: pass `query - English translation` as the text when the "
                   "query has a translation, as the run did (the query alone otherwise)." if run.data.translations
                   else "")
    metrics = {k: v for k, v in info.get("metrics", {}).items() if isinstance(v, (int, float))}
    table = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())) or "| (no validation) | |"
    if fmt == "merged":
        load = f"""from transformers import pipeline
classify = pipeline("text-classification", model="{where}", top_k=None)"""
    else:
        load = f"""from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
base = AutoModelForSequenceClassification.from_pretrained(
    "{base}", num_labels=2, pad_token_id={pad_id},
    id2label={{0: "irrelevant", 1: "relevant"}}, label2id={{"irrelevant": 0, "relevant": 1}})
model = PeftModel.from_pretrained(base, "{where}")
tokenizer = AutoTokenizer.from_pretrained("{where}")
classify = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)"""
    target = {"QC": "category path (levels joined by commas)", "QI": "item title"}[task]
    return f"""# {task} relevance classifier ({"merged checkpoint" if fmt == "merged" else "PEFT LoRA adapter"})

Is a search query relevant to a {target}? A {info["model_type"]} decoder fine-tuned with LoRA and a last-token
classification head by relevance-lm. Labels: 0 `irrelevant`, 1 `relevant`.

- Base model: `{base}`
- Template ({run.data.template}): `{shown}`, which the tokenizer's pair call makes:
  `tokenizer(query, target)`, or `{{"text": query, "text_pair": target}}` in a pipeline.
- Input text: the run's rows were cleaned before tokenizing; do the same to the query and the target: {clean}.
  {translation}
- Length: the run truncated rows to {run.data.max_length} tokens (the end of the target first, then of the
  query); this tokenizer does not truncate, so keep rows within that length for the run's numbers.
- Decision threshold: relevant when P(relevant) >= {info.get("threshold", 0.5):.4f} (tuned on the validation
  probabilities).
- Padding: pad token id {pad_id}; the model pools each row's last token that is not padding.

```python
{load}
scores = classify([{{"text": "red running shoes", "text_pair": "shoes,men's shoes,sneakers"}}])
```

Validation metrics of this model (step {info.get("step", "?")}):

| metric | value |
|---|---|
{table}

Made by: `{command}`
"""
