"""Rules: from a run's findings and signals to causes, evidence, fixes, and the result behind them.

A rule is data (the cause, the published result it rests on, the fixes) plus one small function
that looks at the run and returns what it found, or None. To add a cause, add a function and a
:class:`Rule` to :data:`RULES`.

The modules, lowest first (each imports only from those before it):

- ``base``: the ranks of a cause (MECHANISM, EVENT, SYMPTOM), :class:`Found`, small reads that
  need no run; ``facts``: :class:`RunFacts`; ``rule``: :class:`Fix`, :class:`Diagnosis`,
  :class:`Rule`.
- Reads several causes share: ``series`` (progress, spikes, skipped steps), ``rates`` (learning
  rates, raises, restarts), ``weights`` (how the weights grew or moved), ``amplification`` (a
  signal or gradient amplified from the start, through depth or time; clipping).
- One module per cause or family of causes: ``nonfinite`` (and float16 overflow), ``adam``
  (its second moment poisoned), ``outliers`` (data outliers), ``plasticity``, ``logits`` (output
  logits, softmax collapse), ``spikes`` (gradient and loss spikes), ``attention``, ``divergence``
  (of the loss), ``exploding`` (gradients), ``update_ratio``, ``sharpness``, ``actions`` (the
  autopilot's), ``continual`` (the stability gap), ``memorising``.
- This module: the fixes several rules offer, and :data:`RULES`, in the order they are applied.

To add a cause, write its check (``def _check(facts: RunFacts) -> Found | None``) in its
family's module, or in a new module that imports only from lower ones, and add its
:class:`Rule` to :data:`RULES` here; it reads only the finding kinds its rule declares.
"""

from __future__ import annotations

import math

from steadygrad.core.metrics import PARAM_GROUPS
from steadygrad.diagnose.detectors.curvature import SHARPNESS_ABOVE_LIMIT
from steadygrad.diagnose.detectors.training import (
    AMP_OVERFLOW,
    GRAD_NORM_SPIKE,
    LOSS_SPIKE,
    NONFINITE,
    NONFINITE_ORIGIN,
)
from steadygrad.diagnose.detectors.transformer import (
    ATTENTION_LOGIT_GROWTH,
    GRADIENT_SPIKE,
    LOSS_OF_PLASTICITY,
    OUTPUT_LOGIT_DIVERGENCE,
    SOFTMAX_COLLAPSE_KIND,
    UPDATE_RATIO_OUT_OF_RANGE,
)
from steadygrad.diagnose.detectors.trends import GRADIENT_GROWTH, LOSS_DIVERGENCE, UNSTABLE_STEPS
from steadygrad.diagnose.rules.actions import _autopilot
from steadygrad.diagnose.rules.adam import MOMENTUM_MEMORY, _adam_poisoned, _strongest_damping
from steadygrad.diagnose.rules.amplification import BURST_GAP, _amplified_layer_by_layer
from steadygrad.diagnose.rules.attention import _attention_growth
from steadygrad.diagnose.rules.base import EVENT, MECHANISM, SYMPTOM, Found, _inside, layer_span
from steadygrad.diagnose.rules.continual import STABILITY_GAP_RULE
from steadygrad.diagnose.rules.divergence import _loss_divergence
from steadygrad.diagnose.rules.exploding import _exploding
from steadygrad.diagnose.rules.facts import CONFIRMED_SOON, RunFacts, _weights_replaced
from steadygrad.diagnose.rules.logits import (
    UNBOUNDED,
    _fell_without_bound,
    _logits_pushed_up,
    _output_logits,
    _scaled_at_a_stroke,
    _softmax_collapse,
)
from steadygrad.diagnose.rules.memorising import MEMORISING_RULE
from steadygrad.diagnose.rules.nonfinite import (
    _amp_overflow,
    _nonfinite,
    _nonfinite_gradients_only_in,
)
from steadygrad.diagnose.rules.outliers import _data_outlier
from steadygrad.diagnose.rules.plasticity import _plasticity
from steadygrad.diagnose.rules.rates import DRIVEN, JOLTS
from steadygrad.diagnose.rules.rule import Diagnosis, Fix, Rule
from steadygrad.diagnose.rules.series import BACK_WITHIN, PROGRESS_AFTER, learnt_after
from steadygrad.diagnose.rules.sharpness import (
    GROWN_WITHIN_LIMIT,
    _lr_raised_into_a_jolt,
    _sharpness,
)
from steadygrad.diagnose.rules.spikes import _gradient_spike, _loss_spike
from steadygrad.diagnose.rules.update_ratio import _update_ratio

# the names importers use (tests and bench included), wherever they are defined now
__all__ = [
    "BACK_WITHIN",
    "BURST_GAP",
    "CONFIRMED_SOON",
    "Diagnosis",
    "EVENT",
    "Fix",
    "Found",
    "GROWN_WITHIN_LIMIT",
    "MECHANISM",
    "MOMENTUM_MEMORY",
    "PROGRESS_AFTER",
    "RULES",
    "Rule",
    "RunFacts",
    "SYMPTOM",
    "UNBOUNDED",
    "_amplified_layer_by_layer",
    "_inside",
    "_lr_raised_into_a_jolt",
    "_nonfinite_gradients_only_in",
    "_scaled_at_a_stroke",
    "_strongest_damping",
    "_weights_replaced",
    "layer_span",
    "learnt_after",
]


# Fixes several rules offer. Free names: model, optimizer, loss, logits, targets, q, k,
# head_dim, total_steps, ids, run_dir (what the user's training loop has at hand).
LOWER_LR = Fix("lower the learning rate", "for group in optimizer.param_groups: group['lr'] *= 0.5")
WARMUP = Fix(
    "warm the learning rate up for longer (or lower its peak)",
    "scheduler = steadygrad.optim.WarmupCosine(optimizer, warmup_steps=total_steps // 10, "
    "total_steps=total_steps)",
)
AUTOPILOT = Fix(
    "never apply a non-finite update; roll back automatically with a lower learning rate",
    "mon = steadygrad.Monitor(model, optimizer, autopilot=steadygrad.Autopilot())",
)
CLIP_SPIKES = Fix(
    "clip spikes automatically",
    "mon = steadygrad.Monitor(model, optimizer, "
    "autopilot=steadygrad.Autopilot(spike_clipping=True))",
)

RULES: tuple[Rule, ...] = (
    Rule(
        "attention_logit_growth",
        MECHANISM,
        "warning",
        "Dehghani et al. 2023 (ViT-22B) and Wortsman et al. 2023, 'Small-scale proxies for "
        "large-scale Transformer training instabilities': attention logits that grow without "
        "bound collapse the attention entropy and diverge the run; QK-LayerNorm prevents it.",
        (
            Fix(
                "normalise queries and keys (QK-LayerNorm); build the optimizer again after",
                "steadygrad.nn.add_qk_norm(model)",
                applies=lambda facts: bool(facts.run.config.get("add_qk_norm_applies")),
            ),
            Fix(
                "normalise queries and keys (QK-LayerNorm) inside your attention, before q @ k",
                "q, k = steadygrad.nn.QKNorm(head_dim)(q, k)",
                applies=lambda facts: not facts.run.config.get("add_qk_norm_applies"),
            ),
            LOWER_LR,
        ),
        _attention_growth,
        (ATTENTION_LOGIT_GROWTH, *JOLTS),
        contained=True,
    ),
    Rule(
        "output_logit_divergence",
        MECHANISM,
        "warning",
        "Wortsman et al. 2023 (and Chowdhery et al. 2022, PaLM): the output logits drift to "
        "large negative log-partition values; the auxiliary z-loss 1e-4 * logsumexp^2 keeps "
        "the log-partition near zero.",
        (
            Fix(
                "remove the term that rewards larger logits, or flip its sign: a z-loss adds a "
                "positive multiple of logsumexp^2 (and nll_loss takes log-probabilities: "
                "F.nll_loss(F.log_softmax(logits, -1), y))",
                "loss = loss + steadygrad.nn.z_loss(logits, coef=1e-4)",
                applies=lambda facts: _logits_pushed_up(facts, math.inf) is not None,
            ),
            Fix(
                "give the loss its floor back: a margin goes through softplus (a hinge "
                "through clamp(min=0)), a likelihood through its normaliser",
                "loss = torch.nn.functional.softplus(-(2 * targets - 1) * logits).mean()",
                applies=lambda facts: _fell_without_bound(facts) is not None,
            ),
            Fix(
                "add the z-loss",
                "loss = loss + steadygrad.nn.z_loss(logits, coef=1e-4)",
                applies=lambda facts: (
                    _logits_pushed_up(facts, math.inf) is None
                    and _fell_without_bound(facts) is None
                ),
            ),
        ),
        _output_logits,
        # the rest: to tell the output layer's weights ran away (see _runaway_weights), and
        # whether its updates were too large for them
        (
            OUTPUT_LOGIT_DIVERGENCE,
            ATTENTION_LOGIT_GROWTH,
            LOSS_SPIKE,
            GRAD_NORM_SPIKE,
            GRADIENT_SPIKE,  # a spike's throw (see _thrown_by_a_spike)
            UPDATE_RATIO_OUT_OF_RANGE,
            SOFTMAX_COLLAPSE_KIND,  # logits held at their bound (see _pinned_by_a_collapse)
            LOSS_DIVERGENCE,  # a climb the run came back from (see _transient_around)
        ),
        # an outlier batch's own logits, or the jolt it gave; logits spread so far apart that
        # the softmax rounds to exactly 0 and 1 (a temperature) are that collapse's logits
        explained_by=("data_outlier", "softmax_collapse"),
        # its harm is in the head's logits and the loss: a NaN another module's forward makes
        # from finite inputs (a flat frame's 0/0 in a standardiser) is not a drift's
        contained=True,
    ),
    Rule(
        "softmax_collapse",
        MECHANISM,
        "warning",
        "Prieto et al. 2025, 'Grokking at the edge of numerical stability': float32 softmax "
        "rounds the correct class to exactly 1, its gradient to exactly 0, and learning stalls.",
        (
            Fix(
                "use StableMax cross-entropy",
                "steadygrad.nn.stablemax_cross_entropy(logits, targets)",
            ),
            Fix(
                "project out the naive-loss-minimisation direction (⊥Grad)",
                "optimizer = steadygrad.nn.OrthoGrad(optimizer)",
            ),
        ),
        _softmax_collapse,
        # a spike's throw, a transient's, units dead before it
        (
            SOFTMAX_COLLAPSE_KIND,
            GRAD_NORM_SPIKE,
            GRADIENT_SPIKE,
            LOSS_DIVERGENCE,
            LOSS_OF_PLASTICITY,
        ),
        explained_by=("data_outlier",),  # an outlier batch's own logits, or the jolt it gave
        # its harm is at the loss (a zero gradient) and in the head's logits: a NaN another
        # module's forward makes from finite inputs is not a collapse's
        contained=True,
    ),
    Rule(
        "sharpness_above_limit",
        MECHANISM,
        "warning",
        "Cohen et al. 2021, 'Gradient descent typically occurs at the edge of stability' "
        "(sharpness above 2/lr is unstable for GD), and Cohen et al. 2022 for Adam's "
        "preconditioned sharpness limit (2+2*beta1)/((1-beta1)*lr).",
        (
            Fix(
                "lower the learning rate until sharpness sits below its limit (2/lr for GD, "
                "(2+2*momentum)/lr with heavy-ball momentum)",
                LOWER_LR.code,
            ),
            WARMUP,
        ),
        _sharpness,
        (
            SHARPNESS_ABOVE_LIMIT,
            UNSTABLE_STEPS,
            NONFINITE,
            LOSS_SPIKE,
            GRAD_NORM_SPIKE,
            GRADIENT_SPIKE,  # a batch's own spike, whose update threw the run (_data_outlier)
            LOSS_DIVERGENCE,
            GRADIENT_GROWTH,
            LOSS_OF_PLASTICITY,  # units the first updates killed (_stuck_with_dead_units)
            *DRIVEN,  # what a group set far above the rest drives (_fast_group)
        ),
    ),
    Rule(
        "exploding_gradients",
        MECHANISM,
        "warning",
        "Pascanu, Mikolov and Bengio 2013, 'On the difficulty of training recurrent neural "
        "networks': gradients that grow geometrically (through depth or time) explode; clipping "
        "the gradient norm bounds the step, and a smaller learning rate or a better-conditioned "
        "initialisation removes the growth.",
        (
            Fix(
                "clip the gradient norm",
                "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)",
            ),
            LOWER_LR,
        ),
        _exploding,
        (
            GRADIENT_GROWTH,
            OUTPUT_LOGIT_DIVERGENCE,
            ATTENTION_LOGIT_GROWTH,
            LOSS_SPIKE,
            LOSS_DIVERGENCE,
            GRAD_NORM_SPIKE,
            GRADIENT_SPIKE,
            NONFINITE,
        ),
        # Overshooting steps raise the next gradients: growth across steps then follows from
        # the step size, not from growth through depth or time at fixed weights. So does the
        # knock an outlier gave, or the spike that poisoned Adam's moments: gradients stay up.
        explained_by=("sharpness_above_limit", "data_outlier", "adam_second_moment_poisoned"),
    ),
    Rule(
        "loss_of_plasticity",
        MECHANISM,
        "warning",
        "Dohare et al. 2024 (Nature), 'Loss of plasticity in deep continual learning': dead "
        "units and collapsing feature rank stop a network from learning new data.",
        (
            Fix(
                "shrink and perturb the weights (Ash and Adams 2020) to revive dead units",
                "torch.nn.utils.vector_to_parameters(0.8 * torch.nn.utils.parameters_to_vector("
                "model.parameters()) + 0.01 * torch.randn_like(torch.nn.utils.parameters_to_vector("
                "model.parameters())), model.parameters())",
            ),
            LOWER_LR,
        ),
        _plasticity,
        (
            LOSS_OF_PLASTICITY,
            GRAD_NORM_SPIKE,
            GRADIENT_SPIKE,
            UPDATE_RATIO_OUT_OF_RANGE,
            LOSS_SPIKE,
            NONFINITE,  # none is theirs to make
            LOSS_DIVERGENCE,  # what jolted the run after a raise of the rate that passed
        ),
        # one batch's giant step can push a layer's pre-activations below zero for good
        explained_by=("data_outlier",),
        stalls=True,
    ),
    Rule(
        "update_ratio_out_of_range",
        MECHANISM,
        "warning",
        "Wortsman et al. 2023: instability follows updates that are large relative to the "
        "weights; a ratio near zero marks a frozen layer.",
        (
            Fix(
                "give those layers a learning rate of their own (lower for large updates; for a "
                "frozen layer check requires_grad and that its group's rate is not 0)",
                "optimizer.add_param_group({'params': [], 'lr': optimizer.param_groups[0]['lr']})",
            ),
            Fix(
                "check each group's learning rate against the one meant",
                "print([(g.get('name', i), g['lr']) for i, g in "
                "enumerate(optimizer.param_groups)])",
                applies=lambda facts: bool(facts.run.config.get(PARAM_GROUPS)),
            ),
        ),
        _update_ratio,
        (UPDATE_RATIO_OUT_OF_RANGE, LOSS_OF_PLASTICITY, GRADIENT_GROWTH, *DRIVEN),
        # a second moment inflated by one huge gradient damps the updates to ~0: frozen-looking;
        # a step size above the limit makes updates large relative to the weights
        explained_by=("adam_second_moment_poisoned", "sharpness_above_limit"),
        fault_alone=True,  # a rate of 0, a typo in a layer-wise schedule
    ),
    Rule(
        "adam_second_moment_poisoned",
        EVENT,
        "warning",
        "Huang et al. 2025, 'SPAM: spike-aware Adam with momentum reset': a gradient spike "
        "inflates Adam's moments and damps or misdirects updates for thousands of steps.",
        (
            Fix(
                "use spike-aware Adam",
                "optimizer = steadygrad.optim.SPAM(model.parameters(), "
                "lr=optimizer.param_groups[0]['lr'])",
            ),
            CLIP_SPIKES,
        ),
        _adam_poisoned,
        # a loss spike: a restart's jolt; a climb: where the spike's moments threw the weights
        (GRAD_NORM_SPIKE, GRADIENT_SPIKE, LOSS_SPIKE, LOSS_DIVERGENCE),
        explained_by=("data_outlier",),  # an outlier batch's gradient is the spike that poisons
    ),
    Rule(
        "data_outlier",
        EVENT,
        "warning",
        "Chowdhery et al. 2022 (PaLM): spikes come from particular batches meeting particular "
        "parameter states; skipping those batches avoids them. Huang et al. 2025 (SPAM) damp "
        "the spike's gradient so it does not poison Adam's moments.",
        (
            Fix("find the batch behind it, and drop or fix it", "mon.step(loss, batch_ids=ids)"),
            CLIP_SPIKES,
        ),
        _data_outlier,
        (LOSS_SPIKE, GRAD_NORM_SPIKE, GRADIENT_SPIKE, NONFINITE, LOSS_DIVERGENCE, GRADIENT_GROWTH),
    ),
    Rule(
        "gradient_spike",
        EVENT,
        "warning",
        "Chowdhery et al. 2022 (PaLM) restart before a spike and skip its batches; Huang et "
        "al. 2025 (SPAM) clip spikes against the gradient's running second moment.",
        (
            CLIP_SPIKES,
            Fix("look at the batches behind it", "mon.step(loss, batch_ids=ids)"),
        ),
        _gradient_spike,
        # a NaN: bursts' end, or an edge the spike neared; a loss spike or climb: whether the
        # loss felt the spike
        (
            GRAD_NORM_SPIKE,
            GRADIENT_SPIKE,
            GRADIENT_GROWTH,
            NONFINITE,
            NONFINITE_ORIGIN,
            LOSS_SPIKE,
            LOSS_DIVERGENCE,
        ),
        # an outlier batch makes a gradient spike of its own; a spike that poisoned the second
        # moment is named by what it did
        explained_by=("data_outlier", "adam_second_moment_poisoned"),
    ),
    Rule(
        "nonfinite",
        SYMPTOM,
        "critical",
        "IEEE 754 arithmetic: NaN and Inf propagate forward from the first operation that "
        "produced them; the producer is the first module with finite inputs and a non-finite "
        "output.",
        (
            AUTOPILOT,
            Fix(
                "lower the learning rate or clip the gradient norm",
                "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)",
            ),
        ),
        _nonfinite,
        (NONFINITE, NONFINITE_ORIGIN),
        # a forward pass overflowing float16 makes the loss non-finite; the GradScaler skips
        # the step and the weights stay finite: the overflow is what to fix
        explained_by=("amp_overflow",),
    ),
    Rule(
        "loss_spike",
        SYMPTOM,
        "warning",
        "Chowdhery et al. 2022 (PaLM): loss spikes at scale are tied to particular batches "
        "meeting particular parameter states; rewinding and skipping those batches avoids them.",
        (
            AUTOPILOT,
            WARMUP,
        ),
        _loss_spike,
        (LOSS_SPIKE, GRAD_NORM_SPIKE, GRADIENT_SPIKE, LOSS_DIVERGENCE, NONFINITE),
    ),
    Rule(
        "loss_divergence",
        SYMPTOM,
        "warning",
        "Wortsman et al. 2023 and Chowdhery et al. 2022: a loss that leaves its best level and "
        "keeps climbing is a divergence in progress; rolling back with a lower learning rate "
        "recovers it.",
        (AUTOPILOT, LOWER_LR, WARMUP),
        _loss_divergence,
        (LOSS_DIVERGENCE, LOSS_SPIKE, GRAD_NORM_SPIKE, GRADIENT_SPIKE, NONFINITE),
    ),
    Rule(
        "amp_overflow",
        SYMPTOM,
        "info",
        "Micikevicius et al. 2018, 'Mixed precision training': dynamic loss scaling skips a "
        "step whose gradients overflow and lowers the scale; such a step is expected.",
        (
            Fix(
                "nothing needed; if it is frequent, train in bfloat16",
                "torch.autocast('cuda', dtype=torch.bfloat16)",
            ),
        ),
        _amp_overflow,
        (AMP_OVERFLOW, NONFINITE, NONFINITE_ORIGIN),
    ),
    Rule(
        "autopilot_actions",
        SYMPTOM,
        "info",
        "steadygrad's autopilot: skip non-finite updates, roll back to the last good snapshot "
        "with a lower learning rate (as Chowdhery et al. 2022 restarted before spikes), and "
        "clip after a gradient spike.",
        (Fix("see what it did, step by step", "steadygrad.load(run_dir).actions()"),),
        _autopilot,
        (),
    ),
)


RULES = (*RULES, STABILITY_GAP_RULE)


RULES = (*RULES, MEMORISING_RULE)
