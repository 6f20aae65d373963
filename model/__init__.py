"""Decoder models (Qwen2, Qwen3, Gemma, Gemma2, Gemma3) and BERT-style encoders (BERT, RoBERTa, XLM-RoBERTa)
loaded from Hugging Face safetensors."""
from model.config import ModelConfig
from model.decoder import Decoder
from model.loading import load_pretrained

__all__ = ["ModelConfig", "Decoder", "load_pretrained"]

from model.adapters import build_classifier, load_adapters, save_adapters
from model.classifier import EncoderClassifier, SequenceClassifier, classification_loss, load_classifier
from model.encoder import Encoder
from model.export import export_merged, export_peft
from model.lora import DEFAULT_TARGETS, ENCODER_TARGETS, LoRALinear, add_lora

__all__ += ["DEFAULT_TARGETS", "ENCODER_TARGETS", "LoRALinear", "add_lora", "SequenceClassifier", "EncoderClassifier",
            "Encoder", "classification_loss",
            "load_classifier", "build_classifier", "save_adapters", "load_adapters", "export_peft", "export_merged"]
