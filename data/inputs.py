"""Records -> token ids: one template per model family, translation augmentation, truncation.

Part 1 is the query, or `query + " - " + translation` with translation augmentation; part 2 is the
category path (QC) or item title (QI). With `shared_first` (data.share_prefix) the part that rows share comes
first: the category path of a QC row (then the query), the query of a QI row (as always). Rows whose first
parts are the same text (`group_key`) begin with the same tokens, the prefix data.batching computes once.
The templates, for base (not chat) checkpoints:

    qwen:     {part 1}\\n{part 2}<|im_end|>           Qwen has no BOS; pad is <|endoftext|>
    gemma:    <bos>{part 1}\\n{part 2}<eos>           pad is <pad>
    bert:     [CLS] {part 1} [SEP] {part 2} [SEP]     token types 0 up to the first [SEP], 1 after; pad [PAD]
    roberta:  <s> {part 1} </s></s> {part 2} </s>     (and XLM-RoBERTa) no token types; pad is <pad>

A decoder's row ends in the family's closing token, the one its classifier pools. It is never the pad token, so
transformers' *ForSequenceClassification (which pools the last non-pad token) pools it too in our exports. An
encoder's classifier pools the first token ([CLS] / <s>); its rows are those of the tokenizer's own pair template.

The question template (`question=True`) asks what the head answers, ending where the LM would answer:

    [<bos>]Query: {part 1}\nCategory: {part 2}\nIs this category relevant to the query? Answer:
                                 (QI: "Product" / "this product"; QC shared first: "Category: ... \nQuery: ...")

and pools that last token, the position where the LM's " yes" / " no" (ANSWERS) would come next; a head
initialised from those LM-head rows (model.classifier.lm_head_rows) starts as the LM's own zero-shot
judgement. Rows longer than max_length lose the end of part 2 first, then the end of part 1; the special
tokens, separator and question always stay.

`pair_processor` puts the same template into a tokenizer's post-processor, so that an export's tokenizer.json
makes (part 1, part 2) into these ids in transformers' pair API (`tokenizer(query, target)`).
"""
from dataclasses import dataclass

from tokenizers import Tokenizer, processors

from model import families

ENCODER_FAMILIES = tuple(sorted({f.template for f in families.FAMILIES.values() if f.encoder}))  # first token, plain


class LengthError(ValueError):
    """max_length leaves no room for text in the template."""


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
    """The template family ("qwen", "gemma", "bert", "roberta") of a Hugging Face config's model_type."""
    return families.family(model_type).template


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
SHARED_FIRST_QUESTIONS = {"QC": ("Category: ", "\nQuery: ", QUESTIONS["QC"][2]), "QI": QUESTIONS["QI"]}
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


def query_part(record, translate: bool) -> str:
    return f"{record.query} - {record.translation}" if translate and record.translation else record.query


def parts(record, translate: bool, shared_first: bool = False) -> tuple[str, str]:
    """(part 1, part 2) of a record's row: query then target, or with `shared_first` a QC row's category first."""
    query = query_part(record, translate)
    return (record.target, query) if shared_first and record.task == "QC" else (query, record.target)


def group_key(record, translate: bool, shared_first: bool = False) -> str:
    """Rows with the same key begin with the same tokens (their task's frame and part 1): one shared prefix."""
    return f"{record.task}\n{parts(record, translate, shared_first)[0]}"


def frame(tokenizer: Tokenizer, family: str, task: str | None = None, shared_first: bool = False) -> list[list[int]]:
    """The template's fixed ids around the parts: [prefix, before part 1, between the parts, after part 2], of the
    plain template (task None) or of the question template of `task` (with `shared_first`, a QC question names
    the category first)."""
    tpl = template(family)
    piece = lambda text: tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    prefix = [token_id(tokenizer, tpl.bos)] if tpl.bos else []
    if task is None:
        middle = [token_id(tokenizer, t) for t in tpl.middle]  # an encoder's special tokens between the parts
        return [prefix, [], piece(tpl.separator) + middle, [close_token_id(tokenizer, family)]]
    return [prefix, *(piece(text) for text in (SHARED_FIRST_QUESTIONS if shared_first else QUESTIONS)[task])]


def encode(tokenizer: Tokenizer, family: str, records, max_length: int, translate: bool,
           question: bool = False, shared_first: bool = False) -> list[list[int]]:
    """Token ids per record, at most max_length each, each ending in close_token_id(tokenizer, family), or with
    `question` in the question template's last token (decoders only). The tokenizer's own padding, truncation and
    post-processor are not used (a BERT tokenizer.json may pad every text to 128 tokens); an encoder's texts lose
    any template token they contain, so that the template's are the only ones."""
    if question and family in ENCODER_FAMILIES:
        raise ValueError(f"the question template ends where a decoder's LM answers; a {family} encoder pools its "
                         f"first token and takes the plain template")
    if tokenizer.padding or tokenizer.truncation:
        tokenizer = Tokenizer.from_str(tokenizer.to_str())
        tokenizer.no_padding()
        tokenizer.no_truncation()
    frames = {task: frame(tokenizer, family, task, shared_first) for task in QUESTIONS} if question else {}
    plain = frame(tokenizer, family)
    specials = {i for piece in plain for i in piece} if template(family).middle else set()
    longest = max(sum(map(len, f)) for f in [plain, *frames.values()])
    if max_length - longest < 1:
        raise LengthError(f"max_length={max_length} leaves no room for text in the {family} "
                          f"{'question' if question else 'plain'} template ({longest} tokens)")
    texts = lambda strings: [[i for i in e.ids if i not in specials]  # noqa: E731
                             for e in tokenizer.encode_batch(strings, add_special_tokens=False)]
    pairs = [parts(r, translate, shared_first) for r in records]
    firsts, seconds = texts([first for first, _ in pairs]), texts([second for _, second in pairs])
    rows = []
    for r, a, b in zip(records, firsts, seconds):
        prefix, lead, middle, tail = frames[r.task] if question else plain
        budget = max_length - len(prefix) - len(lead) - len(middle) - len(tail)
        a, b = a[:budget], b[: max(budget - len(a), 0)]
        rows.append(prefix + lead + a + middle + b + tail)
    return rows


def pair_processor(tokenizer: Tokenizer, family: str, task: str | None = None,
                   target_first: bool = False) -> processors.TemplateProcessing:
    """A post-processor that makes tokenizer.encode(query, target) exactly encode's ids of that row (untruncated;
    task None: the plain template, QC / QI: that task's question template; `target_first`: a QC row of
    data.share_prefix, its category first); a single text gets the prefix only. The fixed pieces are special
    tokens of the template, each the ids encode gives them."""
    pieces = dict(zip(("prefix", "before_first", "between", "after_second"),
                      frame(tokenizer, family, task, shared_first=target_first)))
    specials = [{"id": name, "ids": ids, "tokens": [tokenizer.id_to_token(i) for i in ids]}
                for name, ids in pieces.items() if ids]
    first, last = ("$B", "$A") if target_first else ("$A", "$B")
    layout = [p for p in ("prefix", "before_first", first, "between", last, "after_second") if pieces.get(p, True)]
    second = layout.index(first) + 1  # type id 1 from the separator on
    pair = [f"{p}:{int(i >= second)}" for i, p in enumerate(layout)]
    single = ["prefix", "$A"] if pieces["prefix"] else ["$A"]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
