"""Decoder models (Qwen2, Qwen3, Gemma, Gemma2, Gemma3) loaded from Hugging Face safetensors."""
from model.config import ModelConfig
from model.decoder import Decoder
from model.loading import load_pretrained

__all__ = ["ModelConfig", "Decoder", "load_pretrained"]
