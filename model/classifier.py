"""Sequence classifiers. A decoder's: the hidden state of each example's last token and a linear `score` head. An
encoder's: the first token ([CLS] / <s>), BERT's pretrained pooler and a linear `classifier`, or RoBERTa's
classification head (dense, tanh, out_proj).

Attribute names (`model` and `score`; `bert` / `roberta` and `classifier`) mirror transformers'
*ForSequenceClassification, so state-dict keys and PEFT names line up with Hugging Face checkpoints. `head` names
the trained head module (PEFT's modules_to_save), `num_labels` its outputs.
"""
import logging

import torch
import torch.nn.functional as F
from torch import nn

from kernels import dropout
from model.decoder import Decoder
from model.encoder import Encoder, checkpoint_name
from model.loading import (
    CheckpointError,
    canonical_name,
    load_safetensors,
    mapped_tensors,
    read_config,
    resolve,
    safetensors_files,
)


class SequenceClassifier(nn.Module):
    """Logits (N, num_labels), one row per example. The decoder's LM head is dropped (transformers has none).

    The head is float32 whatever the decoder's dtype: it is trained, like the LoRA weights.
    """
    head = "score"

    def __init__(self, model: Decoder, num_labels: int = 2):
        super().__init__()
        model.lm_head = None
        self.model, self.num_labels = model, num_labels
        device = model.embed_tokens.weight.device
        self.score = nn.Linear(model.config.hidden_size, num_labels, bias=False, device=device, dtype=torch.float32)
        self.init_score()

    @torch.no_grad()
    def init_score(self, rows: torch.Tensor | None = None):
        """transformers' init, normal(0, initializer_range); or `rows` (num_labels, hidden), e.g. the LM head's rows
        of the answer tokens (lm_head_rows), so that the logits start as the LM's logits of those tokens."""
        if rows is None:
            nn.init.normal_(self.score.weight, std=self.model.config.hf.get("initializer_range", 0.02))
        else:
            self.score.weight.copy_(rows)

    def forward(self, input_ids, attention_mask=None, position_ids=None, suffix_ids=None) -> torch.Tensor:
        """One row of logits per example: per example id of attention_mask, or per suffix of shared-prefix rows."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pooled = last_token_index(attention_mask if suffix_ids is None else suffix_ids.clamp(min=0))  # not roots
        hidden = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, pooled=pooled,
                            suffix_ids=suffix_ids)
        return self.score(hidden.to(self.score.weight.dtype))


class RobertaHead(nn.Module):
    """transformers' RobertaClassificationHead: out_proj(dropout(tanh(dense(dropout(x)))))."""

    def __init__(self, hidden: int, num_labels: int, p: float):
        super().__init__()
        self.dense, self.out_proj, self.p = nn.Linear(hidden, hidden), nn.Linear(hidden, num_labels), p

    def forward(self, x):
        x = torch.tanh(self.dense(dropout(x, self.p, self.training)))
        return self.out_proj(dropout(x, self.p, self.training))


class EncoderClassifier(nn.Module):
    """Logits (B, num_labels) from each row's first real token ([CLS] / <s>; left padding is handled): BERT through
    the checkpoint's pooler (tanh(dense), frozen like the encoder, LoRA on its dense where `dense` is a target),
    dropout and a linear `classifier`; RoBERTa and XLM-RoBERTa through transformers' RobertaClassificationHead
    (`classifier.dense`, `classifier.out_proj`), fresh (their checkpoints' poolers are ignored, as transformers
    does). The head is float32 and trained in full."""
    head = "classifier"

    def __init__(self, model: Encoder, num_labels: int = 2):
        super().__init__()
        cfg = model.config
        self.base = "bert" if cfg.model_type == "bert" else "roberta"
        setattr(self, self.base, model)
        self.num_labels, self.p = num_labels, cfg.classifier_dropout
        with torch.device(model.embeddings.word_embeddings.weight.device):
            self.classifier = nn.Linear(cfg.hidden_size, num_labels) if self.base == "bert" else \
                RobertaHead(cfg.hidden_size, num_labels, cfg.classifier_dropout)
        self.classifier.float()
        self.init_head()

    @property
    def model(self) -> Encoder:
        return getattr(self, self.base)

    @torch.no_grad()
    def init_head(self, pooler: bool = False):
        """transformers' init of the head (and, with `pooler`, of BERT's pooler): normal(0, initializer_range)
        weights, zero biases."""
        modules = [self.classifier] + ([self.model.pooler] if pooler else [])
        for module in modules:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=self.model.config.hf.get("initializer_range", 0.02))
                    nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask=None, position_ids=None, token_type_ids=None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        first = self.model(input_ids, attention_mask, position_ids, token_type_ids,
                           first=(attention_mask != 0).int().argmax(1))
        if self.base == "bert":
            first = dropout(self.model.pooler(first), self.p, self.training)
        return self.classifier(first.to(torch.float32))


def batch_logits(model, batch: dict, device, bf16: bool) -> torch.Tensor:
    """float32 logits of one batch (data.batching's dict: its input_ids, attention_mask, position_ids and, for
    shared-prefix rows, suffix_ids; for BERT, token_type_ids go to `device`), under bf16 autocast when asked: the one
    forward of training, validation and prediction."""
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids", "suffix_ids",
                                               "token_type_ids")
              if k in batch}
    with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
        return model(**inputs).float()


def lm_head_rows(path_or_id, token_ids: list[int]) -> torch.Tensor:
    """Rows `token_ids` of a checkpoint's LM head (its embeddings when tied), float32, read from the file."""
    directory = resolve(path_or_id)
    name = "model.embed_tokens.weight" if read_config(directory).tie_word_embeddings else "lm_head.weight"
    for file in safetensors_files(directory):
        for key, tensor in mapped_tensors(file).items():
            if canonical_name(key) == name:
                return tensor[token_ids].float()
    raise CheckpointError(f"{directory}: no {name} tensor to read the LM head's rows from")


def last_token_index(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of every example's last token, ordered by row, then by example id k within a row.

    attention_mask (B, T): 0 is padding, k > 0 the k-th example of the row (an ordinary row is all 1 on real
    tokens, left or right padded). Raises on a row without real tokens and on an example split into pieces.
    """
    mask = attention_mask
    real = mask != 0
    if not real.any(dim=1).all():
        empty = (~real.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask rows {empty} have no real token: nothing to classify")
    after = F.pad(mask[:, 1:], (0, 1))
    rows, cols = (real & (mask != after)).nonzero(as_tuple=True)
    key = rows * (mask.shape[1] + 1) + mask[rows, cols]
    key, order = key.sort(stable=True)
    if (key[1:] == key[:-1]).any():
        raise ValueError("attention_mask: an example id occurs in non-contiguous pieces of a row")
    return rows[order], cols[order]


def classification_loss(logits, labels, class_weights=None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy in float32 (with class weights: the weighted mean, as torch defines it)."""
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32,
                                                                device=logits.device)
    return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=label_smoothing)


def load_classifier(path_or_id, num_labels: int = 2, dtype=torch.float32, device="cpu"):
    """A classifier from a Hugging Face checkpoint: a *ForSequenceClassification one loads its head, a base
    checkpoint (*ForCausalLM, BertModel, *ForMaskedLM) gets a freshly initialised one. Base weights in `dtype`, the
    head in float32. A SequenceClassifier for decoders, an EncoderClassifier for encoders."""
    directory = resolve(path_or_id)
    config = read_config(directory)
    if config.encoder:
        return load_encoder_classifier(directory, config, num_labels, dtype, device)
    with torch.device("meta"):
        classifier = SequenceClassifier(Decoder(config).to(dtype), num_labels)
    classifier.to_empty(device=device)
    classifier.init_score()
    load_safetensors(classifier, safetensors_files(directory), strip="", optional=("score.weight",))
    return classifier.eval()


def load_encoder_classifier(directory, config, num_labels: int, dtype, device) -> EncoderClassifier:
    """load_classifier for an encoder. A BERT checkpoint without a pooler (BertModel(add_pooling_layer=False))
    gets a random one, as transformers' BertForSequenceClassification does, with a warning."""
    bert = config.model_type == "bert"
    with torch.device("meta"):
        classifier = EncoderClassifier(Encoder(config, pooler=bert).to(dtype), num_labels)
    classifier.to_empty(device=device)
    classifier.init_head(pooler=bert)
    base = classifier.base
    head = [f"{classifier.head}.{name}" for name, _ in classifier.classifier.named_parameters()]
    pooler = [f"{base}.pooler.{name}" for name, _ in (classifier.model.pooler.named_parameters() if bert else [])]
    loaded = load_safetensors(classifier, safetensors_files(directory), strip="", optional=head + pooler,
                              rename=lambda key: checkpoint_name(key, base, bert))
    if pooler and not set(pooler) <= loaded:
        logging.getLogger(__name__).warning("%s has no pooler: it starts random (as in transformers) and stays "
                                            "frozen; LoRA on its dense (target 'dense') adapts it", directory)
    return classifier.eval()
