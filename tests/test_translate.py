"""The translate command on a tiny random checkpoint: file format, deduplication, resume, fallbacks, ranks."""
import json

import pytest
import torch
from tokenizers.pre_tokenizers import Whitespace

import train.commands.translate
from data import read_records
from train.commands.translate import main

from fixtures import free_port, word_tokenizer
from hf_tiny import save_tiny

WORDS = "translate this e-commerce search query into english reply with the translation only . : <user> <model>"
CHAT_TEMPLATE = ("{% for m in messages %}<user> {{ m.content }} {% endfor %}"
                 "{% if add_generation_prompt %}<model>{% endif %}")
QUERIES = ["zapatos rojos", "sac à main", "zapatos rojos", "red shoes", "gants", "montre", "bolso"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Tiny Qwen3 with a word-level tokenizer (97 tokens) and a chat template."""
    path = tmp_path_factory.mktemp("tiny-it")
    save_tiny("qwen3", path)
    words = ["<pad>", "<unk>", "<eos>"] + WORDS.split() + [w for q in QUERIES for w in q.split()]
    words += [f"w{i}" for i in range(97 - len(set(words)))]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tokenizer = word_tokenizer(vocab, unk="<unk>", pre_tokenizer=Whitespace())
    tokenizer.add_special_tokens(["<pad>", "<eos>"])
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "chat_template": CHAT_TEMPLATE}))
    return path


@pytest.fixture
def competition_file(tmp_path):
    path = tmp_path / "dev_QC.txt"
    languages = ["es", "fr", "es", "en", "fr", "fr", "es"]
    path.write_text("".join(json.dumps({"id": f"r{i}", "task": "QC", "language": lang, "origin_query": q,
                                        "category_path": "shoes,sneakers"}) + "\n"
                            for i, (q, lang) in enumerate(zip(QUERIES, languages))))
    return path


def translations(path):
    """query -> translation of a translation file (one line per unique query)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len({row["origin_query"] for row in rows}) == len(rows)
    return {row["origin_query"]: row["translated_query"] for row in rows}


def parts(output):
    return [json.loads(line) for part in output.parent.glob(output.name + ".rank*.part")
            for line in part.read_text().splitlines()]


def test_every_id_gets_a_translation_of_its_unique_query(checkpoint, competition_file, tmp_path):
    output = tmp_path / "translations.jsonl"
    main([str(competition_file), "--model", str(checkpoint), "--output", str(output), "--batch-size", "2",
          "--max-new-tokens", "4", "--skip-english"])
    got = translations(output)
    assert sorted(got) == sorted(set(QUERIES))  # one line per unique query
    assert got["red shoes"] == "red shoes"  # English kept as is
    translated = [row["query"] for row in parts(output)]
    assert sorted(translated) == sorted(set(QUERIES) - {"red shoes"})  # each unique query translated once


def test_resume_redoes_only_unfinished_queries(checkpoint, competition_file, tmp_path):
    # Batches of one: a query's greedy tokens then cannot depend on which queries share its batch.
    args = [str(competition_file), "--model", str(checkpoint), "--batch-size", "1", "--max-new-tokens", "4"]
    full = tmp_path / "full" / "t.jsonl"
    full.parent.mkdir()
    main(args + ["--output", str(full)])

    resumed = tmp_path / "resumed" / "t.jsonl"
    resumed.parent.mkdir()
    lines = (full.parent / "t.jsonl.rank0.part").read_text().splitlines()
    # An interrupted run: two queries finished, the third line cut in the middle of writing.
    (resumed.parent / "t.jsonl.rank0.part").write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    main(args + ["--output", str(resumed)])
    assert translations(resumed) == translations(full)
    after_cut = (resumed.parent / "t.jsonl.rank0.part").read_text().splitlines()[3:]
    redone = [json.loads(line)["query"] for line in after_cut]
    assert sorted(redone) == sorted(row["query"] for row in map(json.loads, lines[2:]))


def test_empty_or_failed_translations_fall_back_to_the_query(checkpoint, competition_file, tmp_path, monkeypatch):
    def only_eos(decoder, ids, mask, max_new_tokens, eos, pad):
        return torch.full((len(ids), 2), min(eos))

    monkeypatch.setattr(train.commands.translate, "generate", only_eos)
    output = tmp_path / "t.jsonl"
    main([str(competition_file), "--model", str(checkpoint), "--output", str(output)])
    assert translations(output) == {q: q for q in QUERIES}


def test_files_whose_ids_overlap_share_one_translation_file(checkpoint, competition_file, tmp_path):
    """QC and QI files both number their rows from 1: each row still gets its own query's translation."""
    qc, qi = tmp_path / "test_QC.txt", tmp_path / "test_QI.txt"
    files = ((qc, "QC", "category_path", QUERIES[:4]), (qi, "QI", "item_title", QUERIES[3:]))
    for path, task, target, queries in files:
        path.write_text("".join(json.dumps({"id": i, "task": task, "language": "fr", "origin_query": q, target: "x"})
                                + "\n" for i, q in enumerate(queries, 1)))
    output = tmp_path / "t.jsonl"
    main([str(qc), str(qi), "--model", str(checkpoint), "--output", str(output), "--max-new-tokens", "4"])
    got = translations(output)
    for path in (qc, qi):
        records = read_records(path, translations=output, training=False, lowercase=False)
        assert [r.translation for r in records] == [got[r.query] or None for r in records]


def _rank(rank, port, argv):
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    main(argv)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_split_the_queries(checkpoint, competition_file, tmp_path):
    import torch.multiprocessing as mp

    port = free_port()
    args = [str(competition_file), "--model", str(checkpoint), "--batch-size", "1", "--max-new-tokens", "4"]
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    mp.spawn(_rank, args=(port, args + ["--output", str(tmp_path / "two" / "t.jsonl")]), nprocs=2)
    main(args + ["--output", str(tmp_path / "one" / "t.jsonl")])
    per_rank = [{json.loads(line)["query"] for line in (tmp_path / "two" / f"t.jsonl.rank{r}.part").open()}
                for r in (0, 1)]
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == set(QUERIES)
    assert translations(tmp_path / "two" / "t.jsonl") == translations(tmp_path / "one" / "t.jsonl")
