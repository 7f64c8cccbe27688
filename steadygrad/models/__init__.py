"""Tiny built-in models for the demo, the studies and the tests."""

from steadygrad.models.mlp import MLP
from steadygrad.models.tiny_gpt import TinyGPT

__all__ = ["MLP", "TinyGPT"]
