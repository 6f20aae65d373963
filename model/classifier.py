"""Sequence classifier: a decoder, the hidden state of each example's last token, and a linear `score` head.

Attribute names (`model`, `score`) mirror transformers' *ForSequenceClassification, so state-dict keys and PEFT
names line up with Hugging Face checkpoints.
"""
import torch
import torch.nn.functional as F
from torch import nn

from model.decoder import Decoder
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

    def __init__(self, model: Decoder, num_labels: int = 2):
        super().__init__()
        model.lm_head = None
        self.model = model
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
        pooled = last_token_index(attention_mask if suffix_ids is None else suffix_ids)
        hidden = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, pooled=pooled,
                            suffix_ids=suffix_ids)
        return self.score(hidden.to(self.score.weight.dtype))


def batch_logits(model, batch: dict, device, bf16: bool) -> torch.Tensor:
    """float32 logits of one batch (data.batching's dict: its input_ids, attention_mask, position_ids and, for
    shared-prefix rows, suffix_ids go to `device`), under bf16 autocast when asked: the one forward of training,
    validation and prediction."""
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids", "suffix_ids")
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


def load_classifier(path_or_id, num_labels: int = 2, dtype=torch.float32, device="cpu") -> SequenceClassifier:
    """A classifier from a Hugging Face checkpoint: a *ForSequenceClassification one loads its `score` head,
    a *ForCausalLM one gets a freshly initialised head. Decoder weights in `dtype`, the head in float32."""
    directory = resolve(path_or_id)
    with torch.device("meta"):
        classifier = SequenceClassifier(Decoder(read_config(directory)).to(dtype), num_labels)
    classifier.to_empty(device=device)
    classifier.init_score()
    load_safetensors(classifier, safetensors_files(directory), strip="", optional=("score.weight",))
    return classifier.eval()
