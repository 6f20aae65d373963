"""Templates, translation augmentation and truncation with the real Qwen3 and Gemma-3 tokenizers, and token by token
for every family (MiniLM's real tokenizer: tests/test_encoder.py)."""
import functools
import json

import pytest
from tokenizers import Tokenizer
from tokenizers.pre_tokenizers import Sequence, Split

from data.inputs import (
    ANSWERS,
    answer_token_ids,
    close_token_id,
    encode,
    group_key,
    model_family,
    pad_token_id,
    pair_processor,
    token_types,
)
from data.records import Record

from fixtures import word_tokenizer

NAMES = {"qwen": "qwen3", "gemma": "gemma3"}
QUERIES = [  # (language, query, English translation, target)
    ("ja", "ドラクエ バッグ", "dragon quest bag", "luggage & bags,women's handbags,waist packs"),
    ("ko", "싱글렛", "singlet", "novelty & special use,cosplay accessories,cosplay costumes（deactivate）"),
    ("ar", "حذاء رياضي رجالي", "men's sneakers", "shoes,men's shoes,sneakers"),
    ("th", "กระเป๋าสะพายข้าง", "crossbody bag", "luggage & bags,women's handbags,shoulder bags"),
]
RECORDS = [Record(str(i), "QC", lang, q, t, 1, tr) for i, (lang, q, tr, t) in enumerate(QUERIES)]


@functools.cache
def load(folder):
    """The tokenizer and its config, loaded once per test session (Gemma's takes seconds)."""
    config = json.loads((folder / "tokenizer_config.json").read_text())
    return Tokenizer.from_file(str(folder / "tokenizer.json")), config


@pytest.fixture(params=["qwen", "gemma"])
def family_tokenizer(request, shared):
    return request.param, *load(shared / "tokenizers" / NAMES[request.param])


def test_template_and_translation_augmentation(family_tokenizer):
    family, tok, config = family_tokenizer
    bos = config["bos_token"] if config.get("add_bos_token") else ""
    close = tok.id_to_token(close_token_id(tok, family))
    for translate in (False, True):
        rows = encode(tok, family, RECORDS, max_length=128, translate=translate)
        for ids, r in zip(rows, RECORDS):
            first = f"{r.query} - {r.translation}" if translate else r.query
            assert tok.decode(ids, skip_special_tokens=False) == f"{bos}{first}\n{r.target}{close}"
            assert ids[-1] == close_token_id(tok, family)


def test_pad_token_comes_from_the_tokenizer_config(family_tokenizer):
    family, tok, config = family_tokenizer
    assert tok.id_to_token(pad_token_id(tok, family)) == config["pad_token"]


def test_truncation_shortens_the_target_first(family_tokenizer):
    family, tok, _ = family_tokenizer
    long = Record("1", "QI", "ja", "ドラクエ バッグ", "長い商品タイトル " * 50, 1, "dragon quest bag")
    full = encode(tok, family, [long], max_length=10_000, translate=True)[0]
    cut = encode(tok, family, [long], max_length=40, translate=True)[0]
    assert len(cut) == 40 and cut[-1] == full[-1]
    query_end = full.index(tok.encode("\n", add_special_tokens=False).ids[0])
    assert cut[:query_end] == full[:query_end]  # the query is intact, the target lost its end
    assert cut[query_end:-1] == full[query_end : len(cut) - 1]
    tiny = encode(tok, family, [long], max_length=5, translate=True)[0]
    assert len(tiny) == 5 and tiny[-1] == full[-1] and tiny[-2] == full[query_end]  # no target left, query cut


def test_wrong_tokenizer_or_family_is_an_error(shared):
    qwen, _ = load(shared / "tokenizers" / "qwen3")
    with pytest.raises(ValueError, match="no '<bos>' token"):
        encode(qwen, "gemma", RECORDS, 64, False)
    with pytest.raises(ValueError, match="unknown family 'llama'"):
        pad_token_id(qwen, "llama")
    with pytest.raises(ValueError, match="max_length=2 leaves no room"):
        encode(qwen, "qwen", RECORDS, 2, False)


def template_tokenizer():
    """One token per space-separated word, plus the special tokens of every template."""
    words = ["<pad>", "<eos>", "<bos>", "<|endoftext|>", "<|im_end|>", "[UNK]", "\n", "-", "a", "b", "c", "[CLS]",
             "[SEP]", "[PAD]", "<s>", "</s>"]
    return word_tokenizer(words, pre_tokenizer=Sequence([Split(" ", behavior="removed"),
                                                         Split("\n", behavior="isolated")]))


@pytest.mark.parametrize(
    "family, max_length, translate, expected",
    [
        ("gemma", 100, False, "<bos> a b c \n a b c a b c <eos>"),
        ("gemma", 10, True, "<bos> a b c - b \n a b <eos>"),  # the target loses its end first
        ("gemma", 8, True, "<bos> a b c - b \n <eos>"),
        ("gemma", 6, True, "<bos> a b c \n <eos>"),  # then the query
        ("qwen", 9, True, "a b c - b \n a b <|im_end|>"),
        ("bert", 100, True, "[CLS] a b c - b [SEP] a b c a b c [SEP]"),
        ("bert", 9, False, "[CLS] a b c [SEP] a b c [SEP]"),  # the target loses its end first
        ("bert", 5, False, "[CLS] a b [SEP] [SEP]"),  # then the query
        ("roberta", 10, True, "<s> a b c - b </s> </s> a </s>"),
    ],
)
def test_template_and_truncation_token_by_token(family, max_length, translate, expected):
    tok = template_tokenizer()
    record = Record("1", "QC", "en", "a b c", "a b c a b c", 1, "b")
    [ids] = encode(tok, family, [record], max_length, translate)
    assert [tok.id_to_token(i) for i in ids] == expected.split(" ")


def test_encoder_token_types_and_texts_without_template_tokens():
    """BERT's segment B starts after the first [SEP]; a [SEP] typed in a text is dropped, so it cannot move that
    boundary; a tokenizer.json that pads and truncates (MiniLM's pads to 128) is used without either."""
    tok = template_tokenizer()
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), length=30)
    tok.enable_truncation(4)
    records = [Record("1", "QC", "en", "a [SEP] b", "c a", 1, None),
               Record("2", "QC", "en", "c", "a b [CLS] c", 1, None)]
    rows = encode(tok, "bert", records, 100, False)
    assert [" ".join(tok.id_to_token(i) for i in row) for row in rows] == [
        "[CLS] a b [SEP] c a [SEP]", "[CLS] c [SEP] a b c [SEP]"]
    assert token_types("bert", rows) == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1]]
    assert token_types("roberta", rows) is None and token_types("qwen", rows) is None
    with pytest.raises(ValueError, match="a bert encoder pools its first token and takes the plain template"):
        encode(tok, "bert", records, 100, False, question=True)


def test_model_family():
    types = ["qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "bert", "roberta", "xlm-roberta"]
    assert [model_family(t) for t in types] == ["qwen"] * 2 + ["gemma"] * 4 + ["bert", "roberta", "roberta"]
    with pytest.raises(ValueError, match="unsupported model_type 'llama'"):
        model_family("llama")


def test_question_template_asks_and_ends_where_the_answer_comes(family_tokenizer):
    family, tok, config = family_tokenizer
    bos = config["bos_token"] if config.get("add_bos_token") else ""
    qi = Record("9", "QI", "ja", "ドラクエ バッグ", "dragon quest waist bag", 1, None)
    rows = encode(tok, family, RECORDS + [qi], max_length=128, translate=True, question=True)
    frames = {"QC": ("Query: ", "\nCategory: ", "\nIs this category relevant to the query? Answer:"),
              "QI": ("Query: ", "\nProduct: ", "\nIs this product relevant to the query? Answer:")}  # as written
    for ids, r in zip(rows, RECORDS + [qi]):
        lead, middle, tail = frames[r.task]
        first = f"{r.query} - {r.translation}" if r.translation else r.query
        assert tok.decode(ids, skip_special_tokens=False) == f"{bos}{lead}{first}{middle}{r.target}{tail}"
        assert tok.id_to_token(ids[-1]) == ":" and ids[-1] != pad_token_id(tok, family)
    long = Record("1", "QC", "ja", "ドラクエ バッグ " * 30, "長い商品タイトル " * 50, 1, None)
    cut = encode(tok, family, [long], max_length=48, translate=True, question=True)[0]
    assert len(cut) == 48 and tok.decode(cut).endswith(frames["QC"][2])  # the question always stays


def test_each_answer_is_one_token_that_follows_answer_colon(family_tokenizer):
    family, tok, _ = family_tokenizer
    no, yes = answer_token_ids(tok)
    for answer, id_ in zip(ANSWERS, (no, yes)):
        assert tok.encode(f"Answer:{answer}", add_special_tokens=False).ids[-1] == id_
    split = word_tokenizer(["[UNK]", " ", "no", "yes"], pre_tokenizer=Split(" ", "isolated"))  # " no": 2 tokens
    with pytest.raises(ValueError, match="splits the answer ' no' into 2 tokens"):
        answer_token_ids(split)


@pytest.mark.parametrize("question", [False, True])
def test_shared_first_puts_the_category_first_and_a_groups_rows_begin_alike(family_tokenizer, question):
    """data.share_prefix: a QC row is its category path, then the query with its translation; a QI row stays query
    first. Rows with one group key begin with the same tokens through the separator, the prefix shared once."""
    family, tok, config = family_tokenizer
    bos = config["bos_token"] if config.get("add_bos_token") else ""
    close = "" if question else tok.id_to_token(close_token_id(tok, family))
    path = "shoes,men's shoes,sneakers"
    qc = [Record("1", "QC", "ja", "スニーカー", path, 1, "sneakers"),
          Record("2", "QC", "en", "red shoe", path, 0, None)]
    qi = [Record("3", "QI", "en", "red shoe", "Red running shoe", 1, None)]
    rows = encode(tok, family, qc + qi, 128, translate=True, question=question, shared_first=True)
    texts = [tok.decode(ids, skip_special_tokens=False) for ids in rows]
    if question:
        ask = "\nIs this category relevant to the query? Answer:"
        assert texts[0] == f"{bos}Category: {path}\nQuery: スニーカー - sneakers{ask}"
        assert texts[2] == f"{bos}Query: red shoe\nProduct: Red running shoe\nIs this product relevant to the query? " \
                           f"Answer:"
    else:
        assert texts[0] == f"{bos}{path}\nスニーカー - sneakers{close}"
        assert texts[2] == f"{bos}red shoe\nRed running shoe{close}"
    assert group_key(qc[0], True, True) == group_key(qc[1], True, True) != group_key(qi[0], True, True)
    piece = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    prefix = ([tok.token_to_id(bos)] if bos else []) + (piece("Category: ") if question else []) + piece(path) + \
        piece("\nQuery: " if question else "\n")
    assert rows[0][:len(prefix)] == rows[1][:len(prefix)] == prefix


@pytest.mark.parametrize("question", [False, True])
def test_pair_processor_makes_a_pair_into_the_templates_ids(family_tokenizer, question):
    family, tok, _ = family_tokenizer
    qi = Record("9", "QI", "ja", "ドラクエ バッグ", "dragon quest waist bag", 1, "dragon quest bag")
    want = encode(tok, family, RECORDS + [qi], max_length=256, translate=True, question=question)
    paired = Tokenizer.from_str(tok.to_str())  # a copy: load() shares its tokenizer between tests
    for ids, r in zip(want, RECORDS + [qi]):
        paired.post_processor = pair_processor(tok, family, r.task if question else None)
        assert paired.encode(f"{r.query} - {r.translation}", r.target).ids == ids
    bos = [tok.token_to_id("<bos>")] if family == "gemma" else []
    assert paired.encode("a query").ids == bos + tok.encode("a query", add_special_tokens=False).ids
    shared = encode(tok, family, RECORDS + [qi], 256, True, question, shared_first=True)  # data.share_prefix
    for ids, r in zip(shared, RECORDS + [qi]):
        paired.post_processor = pair_processor(tok, family, r.task if question else None, r.task == "QC")
        assert paired.encode(f"{r.query} - {r.translation}", r.target).ids == ids  # still (query, target)
