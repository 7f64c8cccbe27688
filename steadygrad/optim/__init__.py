"""Stabilizing optimizers, schedules and clipping.

Optimizers are drop-in ``torch.optim.Optimizer`` subclasses with a compiled fast path
(``fused=None``/``True``) and a plain eager path (``fused=False``) sharing one update.
"""

from steadygrad.optim._base import COMPILE_SECONDS, compile_available
from steadygrad.optim.adabelief import AdaBelief
from steadygrad.optim.ademamix import AdEMAMix, alpha_schedule, beta3_schedule
from steadygrad.optim.clipping import SpikeClipper, adaptive_clip_grad, clip_grad_norm, clip_spikes
from steadygrad.optim.diffgrad import DiffGrad
from steadygrad.optim.grams import Grams
from steadygrad.optim.lion import Lion
from steadygrad.optim.schedules import (
    WarmupCosine,
    WarmupStableDecay,
    warmup_cosine_multiplier,
    wsd_multiplier,
)
from steadygrad.optim.spam import SPAM, spam_warmup_factor
from steadygrad.optim.stable_spam import StableSPAM, stable_spam_scale

__all__ = [
    "COMPILE_SECONDS",
    "SPAM",
    "AdEMAMix",
    "AdaBelief",
    "DiffGrad",
    "Grams",
    "Lion",
    "SpikeClipper",
    "StableSPAM",
    "WarmupCosine",
    "WarmupStableDecay",
    "adaptive_clip_grad",
    "alpha_schedule",
    "beta3_schedule",
    "clip_grad_norm",
    "clip_spikes",
    "compile_available",
    "spam_warmup_factor",
    "stable_spam_scale",
    "warmup_cosine_multiplier",
    "wsd_multiplier",
]
