"""Records -> token ids: one template per model family, translation augmentation, truncation.

Part 1 is the query, or `query + " - " + translation` with translation augmentation; part 2 is the
category path (QC) or item title (QI). The templates, for base (not chat) checkpoints:

    qwen:     {part 1}\\n{part 2}<|im_end|>           Qwen has no BOS; pad is <|endoftext|>
    gemma:    <bos>{part 1}\\n{part 2}<eos>           pad is <pad>
    bert:     [CLS] {part 1} [SEP] {part 2} [SEP]     token types 0 up to the first [SEP], 1 after; pad [PAD]
    roberta:  <s> {part 1} </s></s> {part 2} </s>     (and XLM-RoBERTa) no token types; pad is <pad>

A decoder's row ends in the family's closing token, the one its classifier pools. It is never the pad token, so
transformers' *ForSequenceClassification (which pools the last non-pad token) pools it too in our exports. An
encoder's classifier pools the first token ([CLS] / <s>); its rows are those of the tokenizer's own pair template.

The question template (`question=True`) asks what the head answers, ending where the LM would answer:

    [<bos>]Query: {part 1}\nCategory: {part 2}\nIs this category relevant to the query? Answer:
                                 (QI: "Product" / "this product")

and pools that last token, the position where the LM's " yes" / " no" (ANSWERS) would come next; a head
initialised from those LM-head rows (model.classifier.init_score_from_lm) starts as the LM's own zero-shot
judgement. Rows longer than max_length lose the end of part 2 first, then the end of part 1; the special
tokens, separator and question always stay.
"""
from dataclasses import dataclass

from tokenizers import Tokenizer

FAMILIES = {"qwen2": "qwen", "qwen3": "qwen"} | dict.fromkeys(["gemma", "gemma2", "gemma3", "gemma3_text"], "gemma") \
    | {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta"}
ENCODER_FAMILIES = ("bert", "roberta")  # pooled at the first token; the plain template only


@dataclass(frozen=True)
class Template:
    bos: str | None
    separator: str  # text between the parts (decoders)
    close: str
    pad: str
    middle: tuple[str, ...] = ()  # special tokens between the parts (encoders)
    token_types: bool = False  # segment ids: 0 up to the first middle token, 1 after (BERT)


TEMPLATES = {
    "qwen": Template(bos=None, separator="\n", close="<|im_end|>", pad="<|endoftext|>"),
    "gemma": Template(bos="<bos>", separator="\n", close="<eos>", pad="<pad>"),
    "bert": Template(bos="[CLS]", separator="", close="[SEP]", pad="[PAD]", middle=("[SEP]",), token_types=True),
    "roberta": Template(bos="<s>", separator="", close="</s>", pad="<pad>", middle=("</s>", "</s>")),
}


def model_family(model_type: str) -> str:
    """"qwen" or "gemma" for a Hugging Face config's model_type."""
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model_type {model_type!r}, expected one of {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def template(family: str) -> Template:
    if family not in TEMPLATES:
        raise ValueError(f"unknown family {family!r}, expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[family]


def token_id(tokenizer: Tokenizer, token: str) -> int:
    id_ = tokenizer.token_to_id(token)
    if id_ is None:
        raise ValueError(f"the tokenizer has no {token!r} token: is it the model's own tokenizer.json?")
    return id_


def pad_token_id(tokenizer: Tokenizer, family: str) -> int:
    return token_id(tokenizer, template(family).pad)


def close_token_id(tokenizer: Tokenizer, family: str) -> int:
    """The token that ends every row (a decoder's classifier pools its hidden state)."""
    return token_id(tokenizer, template(family).close)


def token_types(family: str, rows: list[list[int]]) -> list[list[int]] | None:
    """Segment ids of encode's rows where the family has them (BERT: 0 for [CLS] part 1 [SEP], 1 for part 2 [SEP],
    split after the first [SEP], which encode keeps out of the texts); None for the others."""
    if not template(family).token_types:
        return None
    return [[0] * (row.index(row[-1]) + 1) + [1] * (len(row) - row.index(row[-1]) - 1) for row in rows]


QUESTIONS = {  # task -> (before part 1, between the parts, after part 2)
    "QC": ("Query: ", "\nCategory: ", "\nIs this category relevant to the query? Answer:"),
    "QI": ("Query: ", "\nProduct: ", "\nIs this product relevant to the query? Answer:"),
}
ANSWERS = (" no", " yes")  # the LM's answers after "Answer:", in label order (0: irrelevant, 1: relevant)


def answer_token_ids(tokenizer: Tokenizer) -> list[int]:
    """The token ids of ANSWERS; each must be a single token of this tokenizer."""
    ids = []
    for answer in ANSWERS:
        pieces = tokenizer.encode(answer, add_special_tokens=False).ids
        if len(pieces) != 1:
            raise ValueError(f"the tokenizer splits the answer {answer!r} into {len(pieces)} tokens: the LM head "
                             f"has no single row to start the classifier's head from")
        ids.append(pieces[0])
    return ids


def first_part(record, translate: bool) -> str:
    return f"{record.query} - {record.translation}" if translate and record.translation else record.query


def encode(tokenizer: Tokenizer, family: str, records, max_length: int, translate: bool,
           question: bool = False) -> list[list[int]]:
    """Token ids per record, at most max_length each, each ending in close_token_id(tokenizer, family), or with
    `question` in the question template's last token (decoders only). The tokenizer's own padding, truncation and
    post-processor are not used (a BERT tokenizer.json may pad every text to 128 tokens); an encoder's texts lose
    any template token they contain, so that the template's are the only ones."""
    tpl = template(family)
    if question and family in ENCODER_FAMILIES:
        raise ValueError(f"the question template ends where a decoder's LM answers; a {family} encoder pools its "
                         f"first token and takes the plain template")
    if tokenizer.padding or tokenizer.truncation:
        tokenizer = Tokenizer.from_str(tokenizer.to_str())
        tokenizer.no_padding()
        tokenizer.no_truncation()
    prefix = [token_id(tokenizer, tpl.bos)] if tpl.bos else []
    piece = lambda text: tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    frames = {task: [piece(text) for text in texts] for task, texts in QUESTIONS.items()} if question else {}
    middle = [token_id(tokenizer, t) for t in tpl.middle]
    plain = ([], piece(tpl.separator) + middle, [close_token_id(tokenizer, family)])
    specials = set(prefix + middle + plain[2]) if tpl.middle else set()
    longest = max(sum(map(len, frame)) for frame in [plain, *frames.values()])
    if max_length - len(prefix) - longest < 1:
        raise ValueError(f"max_length={max_length} leaves no room for text in the {family} template")
    texts = lambda strings: [[i for i in e.ids if i not in specials]  # noqa: E731
                             for e in tokenizer.encode_batch(strings, add_special_tokens=False)]
    queries, targets = texts([first_part(r, translate) for r in records]), texts([r.target for r in records])
    rows = []
    for r, q, t in zip(records, queries, targets):
        lead, middle, tail = frames[r.task] if question else plain
        budget = max_length - len(prefix) - len(lead) - len(middle) - len(tail)
        q, t = q[:budget], t[: max(budget - len(q), 0)]
        rows.append(prefix + lead + q + middle + t + tail)
    return rows
