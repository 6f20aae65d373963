"""The data pipeline: competition files -> records -> folds -> token ids -> padded or packed batches."""
from data.batching import (
    BatchSampler,
    Example,
    collate_packed,
    collate_padded,
    collate_rows,
    examples,
    pack,
    padding_waste,
)
from data.folds import assign_folds, fold_stats, group_key
from data.inputs import TEMPLATES, Template, close_token_id, encode, model_family, pad_token_id, token_types
from data.records import DataError, Record, category_levels, read_records, read_translations

__all__ = [
    "BatchSampler", "Example", "collate_packed", "collate_padded", "collate_rows", "examples", "pack", "padding_waste",
    "assign_folds", "fold_stats", "group_key",
    "TEMPLATES", "Template", "close_token_id", "encode", "model_family", "pad_token_id", "token_types",
    "DataError", "Record", "category_levels", "read_records", "read_translations",
]
