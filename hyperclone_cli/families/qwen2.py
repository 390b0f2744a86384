"""Qwen2: Llama's layout with q/k/v biases, GQA, tied embeddings in the small sizes."""

from dataclasses import replace

from .llama import LLAMA

QWEN2 = replace(LLAMA, name="qwen2", architectures=("Qwen2ForCausalLM",), model_types=("qwen2",))
