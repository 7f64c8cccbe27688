"""The largest attention logit ``max |q.k| * scale`` per attention module, model untouched.

Attention-logit growth (Wortsman et al. 2023) is the first instability to appear at high learning
rates: the logits grow with the square of the q/k weight scale until attention becomes one-hot
and the loss diverges. :class:`AttentionLogitSignal` measures it on any model that computes
attention with ``torch.nn.functional.scaled_dot_product_attention`` or ``nn.MultiheadAttention``
(TinyGPT, Hugging Face GPT-2 with its SDPA attention, ``nn.TransformerEncoderLayer``), or by
hand, as a softmax over the last dimension of ``(..., L, L)`` scores (nanoGPT's slow path,
Hugging Face's eager attention) or of a learnt query's scores against a set's keys (attention
pooling): a ``TorchFunctionMode`` sees each call, recomputes the logits
from q and k (or reads the scores), and credits them to the innermost module whose ``forward``
is running, found with forward hooks.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad.core.metrics import ATTN_LOGIT_MAX, ATTN_SATURATED
from steadygrad.core.signal import Value
from steadygrad.monitor.intercept import SAME_VALUES, InterceptingSignal, autograd_step

if TYPE_CHECKING:
    from steadygrad.monitor.monitor import Monitor


def _sdpa_arguments(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):  # noqa: ANN001, ANN202
    """Mirror of F.scaled_dot_product_attention's signature, used to bind its arguments."""


_SDPA = inspect.signature(_sdpa_arguments)
_MHA = inspect.signature(F.multi_head_attention_forward)


@torch.no_grad()
def max_abs_logit(
    q: torch.Tensor, k: torch.Tensor, scale: float, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    """``max |q k^T| * scale`` over the positions where ``allowed`` is True (all if None).

    ``q`` is ``(..., L, E)``, ``k`` is ``(..., S, E)``; ``allowed`` broadcasts to ``(..., L, S)``.

    Example:
        >>> q = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
        >>> float(max_abs_logit(q, q, scale=1.0))
        4.0
    """
    return _largest(_logits(q, k, scale), allowed)


@torch.no_grad()
def _logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``q k^T * scale`` in float32."""
    return (q.float() @ k.float().transpose(-1, -2)) * scale


def _largest(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """The largest ``|logit|`` where ``allowed`` (0 for no logits)."""
    largest = logits.abs() if allowed is None else logits.abs().masked_fill(~allowed, 0.0)
    return largest.amax() if logits.numel() else torch.zeros((), device=logits.device)


# A mask written as a large finite negative number (Hugging Face's eager attention adds the
# dtype's minimum) is no logit: scores at or below this are left out.
MASKED = -1e4


# A row whose largest attention weight is above this is one-hot: its softmax passes almost no
# gradient to the other keys (the attention entropy collapse of Zhai et al. 2023).
SATURATED = 0.99

# What one attention call shows: its largest |logit|, its saturated rows, its rows.
Reading = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@torch.no_grad()
def _reading(
    logits: torch.Tensor, allowed: torch.Tensor | None, added: torch.Tensor | None = None
) -> Reading:
    """The largest ``|logit|`` where ``allowed``, and how many rows (queries with two or more
    keys allowed) put more than ``SATURATED`` of their weight on one key, of how many; ``added``
    is a float mask the softmax adds to the logits."""
    logits = logits.float()
    largest = _largest(logits, allowed)
    scores = logits if added is None else logits + added
    if added is not None:  # keys a large negative shuts out are no keys to attend to
        allowed = added > MASKED if allowed is None else allowed & (added > MASKED)
    if allowed is not None:  # masks stay as small as they came: they broadcast
        scores = scores.masked_fill(~allowed, float("-inf"))
        rows = (allowed.sum(-1) >= 2).expand(logits.shape[:-1])
    else:
        rows = torch.full(logits.shape[:-1], logits.shape[-1] >= 2, device=logits.device)
    saturated = rows & (torch.softmax(scores, -1).amax(-1) > SATURATED)
    return largest, saturated.sum(), rows.sum()


def _sdpa_logit_max(args: tuple, kwargs: dict) -> Reading:
    bound = _SDPA.bind(*args, **kwargs).arguments
    q, k = bound["query"], bound["key"]
    if q.dim() >= 3 and k.dim() >= 3 and q.shape[-3] != k.shape[-3]:  # grouped-query attention
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = bound.get("scale")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    mask = bound.get("attn_mask")
    allowed, added = None, None
    if mask is not None:
        allowed = mask if mask.dtype == torch.bool else mask > float("-inf")
        if mask.dtype != torch.bool:  # an additive mask (a bias, or large negatives)
            added = mask.float().masked_fill(~allowed, 0.0)
    if bound.get("is_causal"):
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        allowed = causal if allowed is None else allowed & causal
    return _reading(_logits(q, k, scale), allowed, added)


def _mha_logit_max(args: tuple, kwargs: dict) -> Reading:
    """Recompute q and k the way ``F.multi_head_attention_forward`` does (no bias_k support)."""
    a = _MHA.bind(*args, **kwargs).arguments
    query, key, heads = a["query"], a["key"], int(a["num_heads"])
    if query.dim() == 2:  # unbatched (L, E)
        query, key = query.unsqueeze(1), key.unsqueeze(1)
    embed = query.shape[-1]
    if a.get("use_separate_proj_weight"):
        w_q, w_k = a["q_proj_weight"], a["k_proj_weight"]
    else:
        w_q, w_k = a["in_proj_weight"][:embed], a["in_proj_weight"][embed : 2 * embed]
    bias = a.get("in_proj_bias")
    b_q, b_k = (None, None) if bias is None else (bias[:embed], bias[embed : 2 * embed])
    with torch.no_grad():
        q = F.linear(query, w_q, b_q)  # (L, N, E)
        k = F.linear(key, w_k, b_k)  # (S, N, E)
    length, batch = q.shape[0], q.shape[1]
    head_dim = embed // heads
    q = q.reshape(length, batch, heads, head_dim).permute(1, 2, 0, 3)  # (N, h, L, d)
    k = k.reshape(k.shape[0], batch, heads, head_dim).permute(1, 2, 0, 3)  # (N, h, S, d)
    allowed = None
    mask = a.get("attn_mask")
    if mask is not None:  # MHA convention: True / -inf means "do not attend"
        ok = ~mask if mask.dtype == torch.bool else mask > float("-inf")
        allowed = ok.reshape(batch, heads, length, -1) if ok.dim() == 3 else ok
    padding = a.get("key_padding_mask")
    if padding is not None:
        ok = ~padding if padding.dtype == torch.bool else padding > float("-inf")
        ok = ok.reshape(batch, 1, 1, -1)
        allowed = ok if allowed is None else allowed & ok
    return _reading(_logits(q, k, 1.0 / math.sqrt(head_dim)), allowed)


# Keys beyond the queries' own that attention computed by hand may hold: learnt "sink" logits
# concatenated to each row (GPT-OSS: one per head), so its softmax is over (L, L + 1) scores.
SINK_KEYS = 4


# The autograd steps between ``q @ k^T`` and its softmax: those that carry values unchanged (a
# reshape, a cast), a scale, a mask, a shift by the row's largest.
BETWEEN_PRODUCT_AND_SOFTMAX = SAME_VALUES | {
    f"{op}Backward" for op in ("Div", "Mul", "Add", "Sub", "MaskedFill", "Where")
}


def _products(scores: torch.Tensor) -> Iterator[Any]:
    """The autograd nodes behind ``scores`` through scales, masks and reshapes only: on each
    branch, the first operation that is none of those (the product that made the scores)."""
    frontier, seen = [scores.grad_fn], set()
    while frontier:
        node = frontier.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if autograd_step(node) in BETWEEN_PRODUCT_AND_SOFTMAX:
            frontier += [n for n, _ in node.next_functions]
        else:
            yield node


def _product_of_activations(scores: torch.Tensor) -> bool:
    """Whether ``scores`` came from a batched product of two computed tensors (``q @ k^T``:
    autograd's ``BmmBackward``) through scales, masks and reshapes only: attention whose
    queries and keys differ in number (a learnt query pooling a sequence, cross-attention).
    A layer's logits come from a product with a weight (``mm``/``addmm``), never ``bmm``."""
    return any(autograd_step(node) == "BmmBackward" for node in _products(scores))


def _pooled_by_a_query(scores: torch.Tensor) -> bool:
    """Whether 2-D ``scores`` (one per item of a set or a sequence) came from one query vector
    against every item's computed key (``k(h) @ q(query)``, ``k(h) @ query``: autograd's
    ``MvBackward``, or a ``MmBackward`` against the vector made a column), through scales,
    masks and reshapes only: attention pooling with a learnt query. A classifier's 2-D logits
    are a product with a weight matrix, one row per example, never with a vector."""
    return any(_query_against_keys(node) for node in _products(scores))


def _query_against_keys(node: Any) -> bool:
    """A product node of computed keys (not a parameter) with one vector, as it is or made a
    column."""
    step, inputs = autograd_step(node), [n for n, _ in node.next_functions]
    if step not in ("MvBackward", "MmBackward") or len(inputs) != 2 or inputs[0] is None:
        return False
    keys = autograd_step(inputs[0]) != "AccumulateGrad"  # the items', computed
    return keys and (step == "MvBackward" or autograd_step(inputs[1]) == "UnsqueezeBackward")


def _softmax_logit_max(args: tuple, kwargs: dict) -> Reading | None:
    """Attention computed by hand (``softmax(q @ k^T * scale + mask, -1)``): the largest
    ``|score|`` fed to a softmax over the last dimension of a ``(..., L, L)`` tensor, or
    ``(..., L, L + s)`` with up to ``SINK_KEYS`` sink logits, or ``(..., Lq, Lk)`` made by a
    product of two activations (3 or more dimensions: a classifier's ``(batch, classes)``
    logits are not attention), leaving out masked scores
    (``-inf``, or at or below ``MASKED``). Scores shifted by their row's largest before the
    softmax (as overflow guards do) read their spread, which is what the softmax sees. None
    for any other softmax."""
    scores = args[0] if args else kwargs.get("input", kwargs.get("self"))
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if not isinstance(scores, torch.Tensor) or scores.dim() < 2 or dim is None:
        return None
    if dim not in (-1, scores.dim() - 1):
        return None
    if scores.dim() == 2:
        if not _pooled_by_a_query(scores):
            return None  # (batch, classes) logits: a classifier's, not attention
    elif not 0 <= scores.shape[-1] - scores.shape[-2] <= SINK_KEYS:  # sink logits, a key each
        if not _product_of_activations(scores):
            return None  # (..., Lq, Lk) scores are attention only as a product of two activations
    scores = scores.detach().float()
    kept = torch.isfinite(scores) & (scores > MASKED)
    return _reading(scores, kept) if scores.numel() else None


def _exp_logit_max(args: tuple, kwargs: dict) -> Reading | None:
    """A softmax written out by hand (``exp(s - s.amax(-1))``, then a division by the row
    sums): the scores fed to an ``exp`` of 3 or more dimensions that a product of two
    activations made (``q @ k^T``, through scales, masks and the shift by the row's largest),
    read as :func:`_softmax_logit_max` reads a softmax's. None for any other ``exp``."""
    scores = args[0] if args else kwargs.get("input", kwargs.get("self"))
    if not isinstance(scores, torch.Tensor) or scores.dim() < 2 or scores.shape[-1] < 2:
        return None
    if not (_product_of_activations(scores) if scores.dim() > 2 else _pooled_by_a_query(scores)):
        return None
    scores = scores.detach().float()
    return _reading(scores, torch.isfinite(scores) & (scores > MASKED))


class AttentionLogitSignal(InterceptingSignal):
    """``attn_logit_max/<module>``: the largest ``|q.k| * scale`` seen in a step, per module;
    ``attn_saturated/<module>``: the share of its attention rows that were one-hot (largest
    weight above ``SATURATED``).

    The module is the innermost one whose ``forward`` was running when attention was computed
    (TinyGPT: ``h.0.attn``; Hugging Face GPT-2: ``transformer.h.0.attn``;
    ``nn.MultiheadAttention``: the MHA module). Masked positions (causal, boolean or ``-inf``
    masks) are left out. ``modules`` restricts the metrics to the named modules. The logits are
    recomputed, so a due step costs about one extra ``q @ k^T`` per attention call: use a cadence
    (``every``).

    Example:
        >>> from steadygrad.models import TinyGPT
        >>> signal = AttentionLogitSignal(every=10)
        >>> # Monitor(model, optimizer, run_dir, signals=[signal])
    """

    metrics = (ATTN_LOGIT_MAX, ATTN_SATURATED)

    def __init__(self, every: int = 10, modules: Sequence[str] | None = None) -> None:
        super().__init__(every)
        if isinstance(modules, str):
            raise TypeError("modules must be a sequence of module names, not a single string")
        self.modules = None if modules is None else list(modules)
        self._max: dict[str, torch.Tensor] = {}
        self._rows: dict[str, list[torch.Tensor]] = {}  # saturated rows, rows
        self.seen = False

    def applies(self) -> bool | str:
        return (
            True
            if self.seen
            else "no attention seen (SDPA, nn.MultiheadAttention, a softmax over (L, L) scores "
            "or a learnt query's, or the exp of q @ k^T)"
        )

    def watched(self) -> dict[Callable, Callable]:
        by_hand = lambda a, k: self._observe(_softmax_logit_max(a, k))  # noqa: E731
        exp = lambda a, k: self._observe(_exp_logit_max(a, k))  # noqa: E731
        return {
            torch.exp: exp,
            torch.Tensor.exp: exp,
            F.scaled_dot_product_attention: lambda a, k: self._observe(_sdpa_logit_max(a, k)),
            F.multi_head_attention_forward: lambda a, k: self._observe(_mha_logit_max(a, k)),
            F.softmax: by_hand,
            torch.softmax: by_hand,
            torch.Tensor.softmax: by_hand,
        }

    def attach(self, monitor: Monitor) -> None:
        if not isinstance(monitor.model, nn.Module):
            raise TypeError(
                f"monitor.model must be a torch.nn.Module, got {type(monitor.model).__name__}"
            )
        super().attach(monitor)
        if self.modules is not None:
            missing = sorted(set(self.modules) - set(self._names.values()))
            if missing:
                raise ValueError(f"modules not found in the model: {missing}")

    def begin(self, step: int) -> None:
        self._max, self._rows = {}, {}
        super().begin(step)

    def collect(self, step: int) -> Mapping[str, Value]:
        self._stop()
        values = {ATTN_LOGIT_MAX.key(n or None): v for n, v in self._max.items()}
        for name, (saturated, rows) in self._rows.items():
            values[ATTN_SATURATED.key(name or "<root>")] = saturated / rows.clamp(min=1)
        self._max, self._rows = {}, {}
        return values

    def _observe(self, reading: Reading | None) -> None:
        if reading is None:
            return  # a softmax that is not attention
        self.seen = True
        name = self.running()
        if self.modules is not None and name not in self.modules:
            return
        value, saturated, rows = reading
        previous = self._max.get(name)
        self._max[name] = value if previous is None else torch.maximum(previous, value)
        counts = self._rows.get(name)
        self._rows[name] = (
            [saturated, rows]
            if counts is None
            else [
                counts[0] + saturated,
                counts[1] + rows,
            ]
        )
