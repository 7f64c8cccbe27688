"""The declarations of the metrics the built-in signals record and the detectors read.

Each is declared once, here, so the signal that writes it, the detector that reads it and the
report that draws it cannot drift apart. A new signal declares its own metrics in its own module
(``Signal.metrics``); only metrics read across packages need to live here.
"""

from __future__ import annotations

from steadygrad.core.metric import Metric

# -- the training step -------------------------------------------------------------------------
LOSS = Metric(
    "loss",
    "the loss passed to mon.step (bare name: the mean over ranks; loss/<rank>: each rank's)",
    per="rank",
    total=True,
    panel="loss",
)
LEARNING_RATE = Metric(
    "lr",
    "each optimizer group's learning rate used at this step",
    per="group",
    scale="log",
    panel="lr",
)
STEP_TIME = Metric("step_time", "seconds since the previous mon.step", unit="s", panel="time")
OPTIMIZER_SKIPPED = Metric(
    "optimizer_skipped",
    "1 when the optimizer did not take this step",
    events=True,
    panel="events",
)
OPTIMIZER_RESTARTED = Metric(
    "optimizer_restarted",
    "the optimizer's step count before its state started again from nothing (a resume that "
    "loaded the model's weights but not the optimizer's state)",
    events=True,
    panel="events",
)
# Action kinds the Monitor records itself (not the autopilot): a new optimizer stepped the
# watched parameters after the one it was given stopped, and the Monitor follows it; the user
# said the loss being minimised changed (Monitor.objective_changed).
OPTIMIZER_REPLACED = "optimizer_replaced"
OBJECTIVE_CHANGED = "objective_changed"
# The batch's shape changed and held (a sequence-length or batch-size schedule): detail
# ``from``, ``to`` (elements in the model's inputs).
INPUT_RESIZED = "input_resized"
# Evidence on a finding made while the loop said its objective was ramping (objective_changed's
# ``over``): the reason it gave, or True.
OBJECTIVE_RAMP = "objective_ramp"
MONITOR_ACTIONS = (OPTIMIZER_REPLACED, OBJECTIVE_CHANGED, INPUT_RESIZED)
AMP_SCALE = Metric("amp_scale", "the GradScaler's loss scale", scale="log", panel="amp")

# -- parameters --------------------------------------------------------------------------------
GRAD_NORM = Metric(
    "grad_norm",
    "L2 norm of the gradient applied (bare name: over every parameter)",
    per="parameter",
    total=True,
    scale="log",
    panel="grad_norm",
)
GRAD_NORM_PRECLIP = Metric(
    "grad_norm_preclip",
    "the global gradient norm before clipping (as the user passed it)",
    scale="log",
    panel="grad_norm",
)
PARAM_NORM = Metric(
    "param_norm",
    "L2 norm of the weights (bare name: over every parameter)",
    per="parameter",
    total=True,
    scale="log",
    panel="param_norm",
)
UPDATE_RATIO = Metric(
    "update_ratio",
    "||w_after - w_before|| / ||w_before|| of one optimizer step",
    per="parameter",
    scale="log",
    panel="update_ratio",
)
NONFINITE_GRADS = Metric(
    "nonfinite_grads",
    "number of NaN/Inf entries in the gradients applied (per rank: before the all-reduce)",
    per="rank",
    total=True,
    unit="count",
    events=True,
    panel="events",
)
GRAD_NORM_LOCAL = Metric(
    "grad_norm_local",
    "L2 norm of one rank's own gradient, before DDP's all-reduce averaged it",
    per="rank",
    scale="log",
    panel="grad_norm",
)
NONFINITE_PARAMS = Metric(
    "nonfinite_params",
    "number of NaN/Inf weight entries",
    unit="count",
    events=True,
    panel="events",
)

# -- activations -------------------------------------------------------------------------------
ACT_RMS = Metric(
    "act_rms",
    "root mean square of a leaf module's output",
    per="module",
    scale="log",
    panel="act_rms",
)

INPUT_RMS = Metric(
    "input_rms",
    "root mean square of the floating-point inputs of the step's first call into the model (its "
    "batch; none for token ids)",
    scale="log",
    panel="act_rms",
)

INPUT_SIZE = Metric(
    "input_size",
    "elements in the tensors passed to the model's forward, at the step's last training call "
    "(its batch: examples times their length)",
    scale="log",
    panel="act_rms",
)

# -- transformers ------------------------------------------------------------------------------
ATTN_LOGIT_MAX = Metric(
    "attn_logit_max",
    "largest attention logit q.k*scale (bare name: over every layer)",
    per="module",
    total=True,
    scale="log",
    panel="attention",
)
ATTN_SATURATED = Metric(
    "attn_saturated",
    "share of a layer's attention rows (queries with two or more keys) whose largest weight "
    "is above 0.99: one-hot attention",
    per="module",
    unit="fraction",
    panel="attention",
)
LOGIT_LSE_MEAN = Metric(
    "logit_lse_mean",
    "mean log-partition log(sum exp(logits)) of the output",
    unit="nats",
    panel="output_logits",
)
OUTPUT_LOGIT_MAX = Metric(
    "output_logit_max", "largest absolute output logit", panel="output_logits"
)
OUTPUT_LOGIT_RMS = Metric("output_logit_rms", "RMS of the output logits", panel="output_logits")
OUTPUT_LOGIT_MEAN = Metric(
    "output_logit_mean",
    "mean output logit: the common shift softmax ignores and z-loss holds near 0",
    panel="output_logits",
)
OUTPUT_SHIFT_GRADIENT = Metric(
    "output_shift_gradient",
    "the loss's gradient along the common shift of the output logits (summed over classes), "
    "over its total size: 0 for any loss of the softmax alone (cross-entropy, label smoothing, "
    "distillation); negative where a term rewards raising every logit (a z-loss of the wrong "
    "sign), positive where one holds them down (z-loss)",
    unit="fraction",
    panel="output_logits",
)
OUTPUT_TARGETS_OUTSIDE = Metric(
    "output_targets_outside",
    "share of a binary cross-entropy's targets outside [0, 1] (a label smoothing typed with the "
    "wrong sign, multi-hot counts), or of a cross-entropy's targets with an entry below 0 as "
    "its class weights and label smoothing weigh them (a teacher's raw logits for its "
    "probabilities, a class weight that lost its minus sign), or of the rows whose loss, read "
    "at a log_softmax's output, pushes a class down however improbable it is (a soft target "
    "below 0 written by hand): no finite logit minimises the loss on them, whose logits it "
    "pushes on for good",
    unit="fraction",
    panel="output_logits",
)
OUTPUT_SCALE = Metric(
    "output_scale",
    "the fixed number the output logits were multiplied by (or divided by: its inverse) after "
    "the layer that made them, written in the forward or the loss as a plain number (an "
    "annealed temperature, ``logits / T``); read only where there is one",
    panel="output_logits",
)
SOFTMAX_COLLAPSE = Metric(
    "softmax_collapse",
    "fraction of rows whose float32 softmax rounds the target to 1",
    unit="fraction",
    panel="output_logits",
)

# -- plasticity --------------------------------------------------------------------------------
DEAD_UNITS = Metric(
    "dead_units",
    "fraction of a layer's units that were zero on every sampled row",
    unit="fraction",
    per="module",
    panel="plasticity",
)
ZEROED_UNITS = Metric(
    "zeroed_units",
    "fraction of a layer's units whose ReLU input was exactly 0 on every sampled row (a gain "
    "or weight set to zero: no signal and no gradient passes)",
    unit="fraction",
    per="module",
    panel="plasticity",
)
RELU_ACTIVE = Metric(
    "relu_active",
    "fraction of a layer's ReLU outputs that were positive (units x sampled rows)",
    unit="fraction",
    per="module",
    panel="plasticity",
)
SATURATED = Metric(
    "saturated",
    "fraction of a layer's tanh or sigmoid outputs in the flat tails, where the slope is under "
    "2% of its peak (|tanh| > 0.99; sigmoid below 0.005 or above 0.995): units x sampled rows",
    unit="fraction",
    per="module",
    panel="plasticity",
)
EFFECTIVE_RANK = Metric(
    "effective_rank",
    "effective rank of a layer's features (exp of the spectral entropy)",
    per="module",
    panel="plasticity",
)

# -- curvature ---------------------------------------------------------------------------------
SHARPNESS = Metric(
    "sharpness",
    "top Hessian eigenvalue on the held batch (per block: of that block)",
    per="module",
    total=True,
    panel="sharpness",
    limit="sharpness_limit",
)
SHARPNESS_LIMIT = Metric(
    "sharpness_limit",
    "the optimizer's stability limit for sharpness (2/lr for GD)",
    panel="sharpness",
)
SHARPNESS_RATIO = Metric("sharpness_ratio", "sharpness / sharpness_limit", panel="sharpness")
HESSIAN_MIN_EIGENVALUE = Metric(
    "hessian_min_eigenvalue", "smallest Hessian eigenvalue Lanczos found", panel="sharpness"
)
HESSIAN_EIGENVALUE = Metric(
    "hessian_eigenvalue",
    "the k-th largest Hessian eigenvalue (k >= 2)",
    per="index",
    panel="sharpness",
)
HESSIAN_TRACE = Metric(
    "hessian_trace",
    "trace of the Hessian (Hutchinson estimate)",
    panel="hessian_trace",
    limit="hessian_trace_limit",
)
HESSIAN_TRACE_LIMIT = Metric(
    "hessian_trace_limit",
    "SGD's linear-stability bound on the trace (2/lr)",
    panel="hessian_trace",
)
HESSIAN_TRACE_RATIO = Metric(
    "hessian_trace_ratio",
    "hessian_trace / hessian_trace_limit (SGD's criterion, 1 = edge)",
    panel="hessian_trace",
)
PRECONDITIONED_SHARPNESS = Metric(
    "preconditioned_sharpness",
    "top eigenvalue of Adam's preconditioned Hessian P^-1 H",
    panel="preconditioned_sharpness",
    limit="preconditioned_sharpness_limit",
)
PRECONDITIONED_SHARPNESS_LIMIT = Metric(
    "preconditioned_sharpness_limit",
    "Adam's limit (2+2 beta1)/((1-beta1) lr)",
    panel="preconditioned_sharpness",
)
PRECONDITIONED_SHARPNESS_RATIO = Metric(
    "preconditioned_sharpness_ratio",
    "preconditioned sharpness / its limit",
    panel="preconditioned_sharpness",
)
CURVATURE_MATVECS = Metric(
    "curvature_matvecs",
    "Hessian-vector products the probe used",
    unit="count",
    panel="cost",
)

# -- the update's own stability ----------------------------------------------------------------
DIRECTIONAL_SHARPNESS_RATIO = Metric(
    "directional_sharpness_ratio",
    "curvature along the last update against its stability limit (1 = at the limit): "
    "(1 - r)/2 with r = slope after / slope before the step along the update",
    panel="sharpness",
)
# Record meta flag next to a directional sharpness ratio: the update was scaled per coordinate
# (Adam, RMSprop, Adagrad, ...). Such a step reads above 1 while training well (a healthy BERT
# under AdamW: 90th percentile 2.4), so the ratio is evidence only next to a break there.
ADAPTIVE_UPDATE = "adaptive_update"
# Record meta key: the parameter tensors that got no gradient and, nudged, left the model's
# output unchanged (dead code, not a frozen layer); listed once, at the step checked.
UNUSED_PARAMETERS = "unused_parameters"
# Record meta key: the parameter tensors the optimizer holds that had ``requires_grad=False``
# when the Monitor attached (a fixed sinusoidal table, a fine-tuning recipe's frozen block):
# frozen by the code's own statement; listed once, on the first record.
FROZEN_AT_ATTACH = "frozen_at_attach"
# Record meta key: parameters that were frozen and outside the optimizer at attach, and have
# since received gradients at every record for a while with their values never changed: the
# layer was unfrozen after the optimizer was built without it.
GRADIENTS_NOT_APPLIED = "gradients_not_applied"
# Record meta key: the optimizer's family (:func:`steadygrad.core.optimizer_family`), on the
# first record: whether a step scales with the gradient is part of reading one.
OPTIMIZER_FAMILY = "optimizer_family"
# Record meta key next to the output-logit statistics: the module that produced the logits (the
# head), when one did.
OUTPUT_MODULE = "output_module"
# Run config key: the module whose weight matrix is nearest the model's output in the autograd
# graph (see :mod:`steadygrad.monitor.output_layer`).
OUTPUT_LAYER = "output_layer"
# Run config key: the first module holding weights that a hooked step's forward ran (the one
# that reads the model's input batch), where the inputs' scale enters every later layer.
INPUT_LAYER = "input_layer"
# Record meta key on records whose forward was hooked, and run config key (the union over the
# run): the modules applied in a recurrence (one call's input made from an earlier call's output
# of the same module) and the built-in recurrent layers, whose repeated Jacobian product is where
# gradients explode.
RECURRENT_MODULES = "recurrent_modules"
# Run config key: for a layer whose units the dead-unit signal reads, the activation module
# (``nn.ReLU``, ``nn.Tanh``) whose forward applied the activation to its output, where one did:
# the dead units are the layer's, seen at that module.
ACTIVATION_MODULES = "activation_modules"
# Run config key: the monitored parameters' names in each optimizer group, keyed as the group's
# learning rate is stored (``lr/<name or index>``), when the optimizer has two groups or more.
PARAM_GROUPS = "param_groups"
# Run config key: how many scalar weights the Monitor watches (the trainable parameters' total
# number of elements): an Adam-type step moves each at most about its learning rate, all of
# them together by about ``lr * sqrt(count)``.
PARAMETER_COUNT = "parameters"
# Run config key: the monitored parameters that hold one number each (a learnt temperature, a
# logit scale, a gate): knobs routinely given a rate of their own, in a group of their own.
SCALAR_PARAMETERS = "scalar_parameters"
# Key in a record's ``forward_origin``: the module that made the first non-finite value did so in
# float16 from finite inputs, and computed again in float32 its output is finite (it overflowed
# float16's range, 65504).
FLOAT16_OVERFLOW = "float16_overflow"
# Record meta key next to the output-logit statistics: how many classes the logits score (their
# last dimension). A softmax over them sits at log Z = log(classes) when every logit is 0.
OUTPUT_CLASSES = "output_classes"
# Record meta key next to the output-logit statistics: the machine epsilon of the coarsest
# precision the logits were computed in (their dtype's, or autocast's where it was on). Their
# level costs resolution in half precision (a log Z of 300 in bfloat16 is rounded to 2), not in
# float32 (to 3e-5).
OUTPUT_EPSILON = "output_epsilon"
# Record meta key a signal sets when its reading hints that a mechanism is starting (a first
# row of the softmax collapsed): the Monitor then reads the mechanism signals at the next few
# steps, as after a finding, so a detector's patience is met in steps, not cadences.
LOOK_CLOSER = "look_closer"
# Record meta key the Monitor sets on a step finished one call late (``Monitor(defer=...)``):
# the next step has begun, so what a signal reads live now (gradients, weights) is the next
# step's, not this one's.
FINISHED_LATE = "finished_late"
