"""Records -> token ids: one template per model family, translation augmentation, truncation.

Part 1 is the query, or `query + " - " + translation` with translation augmentation; part 2 is the
category path (QC) or item title (QI). The templates, for base (not chat) checkpoints:

    qwen:   {part 1}\\n{part 2}<|im_end|>           Qwen has no BOS; pad is <|endoftext|>
    gemma:  <bos>{part 1}\\n{part 2}<eos>           pad is <pad>

Every row ends in the family's closing token, the one the classifier pools. It is never the pad token, so
transformers' *ForSequenceClassification (which pools the last non-pad token) pools it too in our exports.

The question template (`question=True`) asks what the head answers, ending where the LM would answer:

    [<bos>]Query: {part 1}\nCategory: {part 2}\nIs this category relevant to the query? Answer:
                                 (QI: "Product" / "this product")

and pools that last token, the position where the LM's " yes" / " no" (ANSWERS) would come next; a head
initialised from those LM-head rows (model.classifier.init_score_from_lm) starts as the LM's own zero-shot
judgement. Rows longer than max_length lose the end of part 2 first, then the end of part 1; the special
tokens, separator and question always stay.

`pair_processor` puts the same template into a tokenizer's post-processor, so that an export's tokenizer.json
makes (part 1, part 2) into these ids in transformers' pair API (`tokenizer(query, target)`).
"""
from dataclasses import dataclass

from tokenizers import Tokenizer, processors

FAMILIES = {"qwen2": "qwen", "qwen3": "qwen"} | dict.fromkeys(["gemma", "gemma2", "gemma3", "gemma3_text"], "gemma")


@dataclass(frozen=True)
class Template:
    bos: str | None
    separator: str
    close: str
    pad: str


TEMPLATES = {
    "qwen": Template(bos=None, separator="\n", close="<|im_end|>", pad="<|endoftext|>"),
    "gemma": Template(bos="<bos>", separator="\n", close="<eos>", pad="<pad>"),
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
    """The token that ends every row: the classifier pools its hidden state."""
    return token_id(tokenizer, template(family).close)


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


def frame(tokenizer: Tokenizer, family: str, task: str | None = None) -> list[list[int]]:
    """The template's fixed ids around the parts: [prefix, before part 1, between the parts, after part 2], of the
    plain template (task None) or of the question template of `task`."""
    tpl = template(family)
    piece = lambda text: tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    prefix = [token_id(tokenizer, tpl.bos)] if tpl.bos else []
    if task is None:
        return [prefix, [], piece(tpl.separator), [close_token_id(tokenizer, family)]]
    return [prefix, *(piece(text) for text in QUESTIONS[task])]


def encode(tokenizer: Tokenizer, family: str, records, max_length: int, translate: bool,
           question: bool = False) -> list[list[int]]:
    """Token ids per record, at most max_length each, each ending in close_token_id(tokenizer, family), or with
    `question` in the question template's last token."""
    frames = {task: frame(tokenizer, family, task) for task in QUESTIONS} if question else {}
    plain = frame(tokenizer, family)
    if max_length - max(sum(map(len, f)) for f in [plain, *frames.values()]) < 1:
        raise ValueError(f"max_length={max_length} leaves no room for text in the {family} template")
    queries = tokenizer.encode_batch([first_part(r, translate) for r in records], add_special_tokens=False)
    targets = tokenizer.encode_batch([r.target for r in records], add_special_tokens=False)
    rows = []
    for r, q, t in zip(records, queries, targets):
        prefix, lead, middle, tail = frames[r.task] if question else plain
        budget = max_length - len(prefix) - len(lead) - len(middle) - len(tail)
        q, t = q.ids[:budget], t.ids[: max(budget - len(q.ids), 0)]
        rows.append(prefix + lead + q + middle + t + tail)
    return rows


def pair_processor(tokenizer: Tokenizer, family: str, task: str | None = None) -> processors.TemplateProcessing:
    """A post-processor that makes tokenizer.encode(part 1, part 2) exactly encode's ids of that row (untruncated;
    task None: the plain template, QC / QI: that task's question template); a single text gets the prefix only.
    The fixed pieces are special tokens of the template, each the ids encode gives them."""
    pieces = dict(zip(("prefix", "before_query", "between", "after_target"), frame(tokenizer, family, task)))
    specials = [{"id": name, "ids": ids, "tokens": [tokenizer.id_to_token(i) for i in ids]}
                for name, ids in pieces.items() if ids]
    layout = [p for p in ("prefix", "before_query", "$A", "between", "$B", "after_target") if pieces.get(p, True)]
    second = layout.index("$A") + 1  # type id 1 from the separator on
    pair = [f"{p}:{int(i >= second)}" for i, p in enumerate(layout)]
    single = ["prefix", "$A"] if pieces["prefix"] else ["$A"]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
