"""Installs the packages of the project: model, data, train (with train.commands), kernels."""
from setuptools import setup

setup(
    name="relevance-lm",
    version="0.1.0",
    description="Fine-tune Gemma and Qwen decoders into query relevance classifiers, in plain PyTorch.",
    packages=["model", "data", "train", "train.commands", "kernels"],
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.5",
        "safetensors",
        "tokenizers",
        "huggingface_hub",
        "numpy",
        "scikit-learn",
        "pyyaml",
        "jinja2",  # chat templates for train.commands.translate (torch depends on it already)
    ],
    extras_require={
        # triton: the version torch 2.13 pins; its interpreter runs the kernel tests on CPU.
        "test": ["pytest", "hypothesis", "ruff", "transformers>=5.0", "peft>=0.17", "tensorboard",
                 "triton==3.7.1; platform_system == 'Linux'"],
        "plot": ["matplotlib"],
        "tensorboard": ["tensorboard"],  # train.loggers: [tensorboard]
    },
)
