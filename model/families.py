"""Every supported model family, one entry per Hugging Face model_type: the facts the model, the templates, the
exports and the benchmark read about it. A new family is one entry here (and, for a new kind of row, a template in
data/inputs.py)."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    template: str  # data.inputs.TEMPLATES key: how a row of this family is written
    architectures: tuple[str, str]  # transformers classes an export names: base model, sequence classification
    encoder: bool = False  # a BERT-style encoder (model/encoder.py), else a decoder (model/decoder.py)
    tokenizer: str = ""  # folder of ../shared/tokenizers with this family's real tokenizer ("": none there)


FAMILIES = {
    "qwen2": Family("qwen", ("Qwen2ForCausalLM", "Qwen2ForSequenceClassification"), tokenizer="qwen3"),
    "qwen3": Family("qwen", ("Qwen3ForCausalLM", "Qwen3ForSequenceClassification"), tokenizer="qwen3"),
    "gemma": Family("gemma", ("GemmaForCausalLM", "GemmaForSequenceClassification"), tokenizer="gemma3"),
    "gemma2": Family("gemma", ("Gemma2ForCausalLM", "Gemma2ForSequenceClassification"), tokenizer="gemma3"),
    "gemma3_text": Family("gemma", ("Gemma3ForCausalLM", "Gemma3TextForSequenceClassification"), tokenizer="gemma3"),
    "bert": Family("bert", ("BertModel", "BertForSequenceClassification"), encoder=True),
    "roberta": Family("roberta", ("RobertaModel", "RobertaForSequenceClassification"), encoder=True),
    "xlm-roberta": Family("roberta", ("XLMRobertaModel", "XLMRobertaForSequenceClassification"), encoder=True),
}


ALIASES = {"gemma3": "gemma3_text"}  # a multimodal Gemma-3 config.json, read for its text part (model.config)


def family(model_type: str) -> Family:
    model_type = ALIASES.get(model_type, model_type)
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model_type {model_type!r}, expected one of {sorted(FAMILIES)}")
    return FAMILIES[model_type]
