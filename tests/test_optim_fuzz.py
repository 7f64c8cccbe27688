"""Property tests of every optimizer's, schedule's and clipper's hyperparameters.

The oracle is a table of the documented valid range of each argument, written here: any drawn
value (NaN, inf, huge, tiny, negative, wrong types) must be accepted exactly when the table says
it is valid, stored unchanged (no clamping), and otherwise refused with a ValueError/TypeError
that names the argument. Valid hyperparameters must give finite, moving parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from numbers import Integral, Real

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from steadygrad.optim import (
    SPAM,
    AdaBelief,
    AdEMAMix,
    DiffGrad,
    Grams,
    Lion,
    SpikeClipper,
    StableSPAM,
    WarmupCosine,
    WarmupStableDecay,
    adaptive_clip_grad,
    clip_grad_norm,
)

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EDGE_FLOATS = [0.0, -0.0, 5e-324, 1e-300, 1e-45, 1.0, 1.0 - 2**-53, 1.5, 1e300, -1e-300, -1.0]
# Anything a user might pass by mistake: every float, ints beyond float range, other types.
ANY = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(EDGE_FLOATS),
    st.integers(-(2**1100), 2**1100),
    st.integers(-3, 1100),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.binary(min_size=2, max_size=3),
    st.lists(st.floats(0, 1, exclude_max=True), max_size=4).map(tuple),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=2, max_size=3),
    st.sampled_from(
        [
            np.float32(0.5),
            np.float64(0.25),
            np.int64(3),
            np.bool_(True),
            Fraction(1, 2),
            Fraction(10**400),
            Decimal("0.5"),
            complex(0.5, 0.0),
            object(),
            torch.tensor(0.5),
            np.int64(8),
            8.0,
            32.0,
            "reference",
            "cosine",
            "linear",
        ]
    ),  # fmt: skip
)


@dataclass(frozen=True)
class Arg:
    """One argument's documented valid values: a predicate and a strategy drawing from them."""

    valid: Callable[[object], bool]
    draw: st.SearchStrategy
    stored: Callable[[object], object] = lambda v: v  # what the object keeps for a valid value


def real(low=None, high=None, *, low_open=False, high_open=False, draw=None) -> Arg:
    def valid(v: object) -> bool:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, Real):
            return False
        try:
            f = float(v)
        except OverflowError:
            return False
        if not math.isfinite(f):
            return False
        if low is not None and (f < low or (low_open and f == low)):
            return False
        return high is None or (f < high if high_open else f <= high)

    lo = -1e300 if low is None else low
    hi = 1e300 if high is None else high
    default = st.floats(lo, hi, exclude_min=low_open, exclude_max=high_open)
    return Arg(valid, draw or default, float)


def integer(low: int, *, optional: bool = False, high: int = 10**6) -> Arg:
    def valid(v: object) -> bool:
        if optional and v is None:
            return True
        ok_type = isinstance(v, Integral) and not isinstance(v, (bool, np.bool_))
        return ok_type and v >= low

    draw = st.integers(low, high)
    return Arg(valid, st.none() | draw if optional else draw, lambda v: v if v is None else int(v))


def boolean() -> Arg:
    return Arg(lambda v: isinstance(v, bool), st.booleans())


def choice(*options: str) -> Arg:
    return Arg(lambda v: isinstance(v, str) and v in options, st.sampled_from(options))


def betas(n: int) -> Arg:
    one = real(0.0, 1.0, high_open=True)

    def valid(v: object) -> bool:
        return isinstance(v, (tuple, list)) and len(v) == n and all(one.valid(b) for b in v)

    draw = st.tuples(*[st.floats(0.0, 1.0, exclude_max=True)] * n)
    return Arg(valid, draw, lambda v: tuple(float(b) for b in v))


LR = real(0.0)
WD = real(0.0)
EPS = real(0.0)
COMMON = {"lr": LR, "weight_decay": WD, "betas": betas(2), "foreach": Arg(
    lambda v: v is None or isinstance(v, bool), st.none() | st.booleans())}  # fmt: skip
STATE_BITS = Arg(lambda v: integer(8).valid(v) and v in (8, 32), st.sampled_from([8, 32]), int)
OPTIMIZERS = {
    SPAM: {**COMMON, "eps": EPS, "state_bits": STATE_BITS, "threshold": real(0.0),
           "reset_interval": integer(1), "warmup_steps": integer(0),
           "accumulation_steps": integer(0), "correct_bias": boolean(),
           "guard_zero_variance": boolean()},
    StableSPAM: {**COMMON, "eps": EPS, "state_bits": STATE_BITS,
                 "gamma1": real(0.0, 1.0, high_open=True), "gamma2": real(0.0, 1.0, high_open=True),
                 "gamma3": real(0.0, 1.0, high_open=True), "total_steps": integer(1, optional=True),
                 "eta_min": real(0.0, 1.0), "reset_interval": integer(0),
                 "reset_mode": choice("reference", "clean")},
    AdaBelief: {**COMMON, "eps": real(0.0, low_open=True), "state_bits": STATE_BITS,
                "decoupled_weight_decay": boolean(), "fixed_decay": boolean(),
                "rectify": boolean(), "degenerated_to_sgd": boolean(), "amsgrad": boolean()},
    DiffGrad: {**COMMON, "eps": EPS, "state_bits": STATE_BITS,
               "decoupled_weight_decay": boolean()},
    Lion: {**COMMON},
    AdEMAMix: {**COMMON, "betas": betas(3), "eps": EPS, "state_bits": STATE_BITS,
               "alpha": real(0.0), "alpha_warmup": integer(1, optional=True),
               "beta3_warmup": integer(1, optional=True)},
    Grams: {**COMMON, "eps": EPS, "state_bits": STATE_BITS},
}  # fmt: skip
ON_OBJECT = ("foreach", "state_bits")  # kept as attributes, not in the param group


def _params() -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(3, 4, generator=gen)),
        torch.nn.Parameter(torch.randn(4, generator=gen)),
    ]


def _check_refusal(exc: Exception, name: str) -> None:
    assert type(exc) in (ValueError, TypeError), f"{name}: {type(exc).__name__}: {exc}"
    assert name in str(exc), f"the error does not name {name!r}: {exc}"


@pytest.mark.parametrize("cls", list(OPTIMIZERS), ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_optimizer_accepts_exactly_the_documented_values(cls, data):
    spec = OPTIMIZERS[cls]
    name = data.draw(st.sampled_from(sorted(spec)), label="argument")
    arg = spec[name]
    value = data.draw(ANY | arg.draw, label=name)
    try:
        opt = cls(_params(), fused=False, **{name: value})
    except Exception as exc:  # noqa: BLE001 - the property is about which exceptions
        _check_refusal(exc, name)
        assert not arg.valid(value), f"{cls.__name__} refused valid {name}={value!r}: {exc}"
        return
    assert arg.valid(value), f"{cls.__name__} accepted invalid {name}={value!r}"
    kept = getattr(opt, name) if name in ON_OBJECT else opt.param_groups[0][name]
    assert kept == arg.stored(value) and type(kept) is type(arg.stored(value))


# Practical ranges for stepping: float32 scalars (the kernels' hp) must not underflow to 0.
STEP_LR = st.just(0.0) | st.floats(1e-3, 1.0)
STEP_EPS = st.floats(1e-12, 1e-2)
STEP_OVERRIDES = {"lr": STEP_LR, "eps": STEP_EPS, "weight_decay": st.floats(0.0, 10.0),
                  "alpha": st.floats(0.0, 10.0), "threshold": st.floats(0.0, 1e4)}  # fmt: skip
STEPS = 4


@pytest.mark.parametrize("cls", list(OPTIMIZERS), ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_valid_hyperparameters_give_finite_moving_parameters(cls, data):
    spec = OPTIMIZERS[cls]
    kwargs = {
        name: data.draw(STEP_OVERRIDES.get(name, arg.draw), label=name)
        for name, arg in sorted(spec.items())
    }
    if cls is SPAM:
        # Documented quirk: a zero second moment while clipping is active (right after a reset
        # with no accumulation window) clips the gradient to 0 unless guarded. At the start
        # the window counts from step 0, as the reference's does: a window of 1 leaves the
        # first step clipped against the zero state (hypothesis found accumulation_steps=1,
        # betas=(0, 0), threshold=1, reset_interval=5: no weight moves in 4 steps).
        assume(kwargs["guard_zero_variance"] or kwargs["accumulation_steps"] > 1)
    params = _params()
    before = [p.detach().clone() for p in params]
    opt = cls(params, fused=False, **kwargs)
    group = opt.param_groups[0]
    for name, value in kwargs.items():
        kept = getattr(opt, name) if name in ON_OBJECT else group[name]
        assert kept == spec[name].stored(value)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        assert all(torch.isfinite(p).all() for p in params), kwargs
    # Documented: rectified AdaBelief makes no update while rho_t < 5 unless it degenerates to SGD.
    idle = cls is AdaBelief and kwargs["rectify"] and not kwargs["degenerated_to_sgd"]
    if cls is AdaBelief:
        # AdaBelief adds eps to its belief s at every step (as the authors' code does), so its
        # first bias-corrected denominators are sqrt(eps / (1 - beta2)): with beta2 within 1e-16
        # of 1 a step is lr * sqrt((1 - beta2) / eps) of the gradient, under what float32 resolves
        # on weights of size 1 (hypothesis found beta2 = 1 - 2**-53, eps = 2**-7, lr = 2**-6).
        beta2 = kwargs["betas"][1]
        idle = idle or kwargs["lr"] * math.sqrt((1 - beta2) / kwargs["eps"]) < 1e-6
    if cls is SPAM and kwargs["correct_bias"]:
        # SPAM corrects the bias in the step size and adds eps to the uncorrected sqrt(v), as
        # HF's AdamW and the authors' code do: with beta2 within 1e-16 of 1 a step is about
        # lr * sqrt(t * (1 - beta2)) / eps of the gradient, under what float32 resolves on
        # weights of size 1 (hypothesis found beta2 = 1 - 2**-52, eps = 2**-7, lr = 1e-3)
        beta2 = kwargs["betas"][1]
        idle = idle or kwargs["lr"] * math.sqrt(STEPS * (1 - beta2)) / kwargs["eps"] < 1e-6
    if cls is SPAM and not kwargs["correct_bias"]:
        # Without bias correction the first moment starts at (1 - beta1) of the gradient: with
        # beta1 within 1e-16 of 1, STEPS steps move a weight by about
        # lr * STEPS * (1 - beta1) / sqrt(1 - beta2), under what float32 resolves on weights of
        # size 1 (hypothesis found beta1 = 1 - 2**-52, beta2 = 0.3, lr = 1)
        beta1, beta2 = kwargs["betas"]
        step = kwargs["lr"] * STEPS * (1 - beta1) / (math.sqrt(1 - beta2) + kwargs["eps"])
        idle = idle or step < 1e-6
    if kwargs["lr"] > 0 and not idle:
        assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True)), kwargs


# ------------------------------------------------------------- schedules and clipping


def _sgd() -> torch.optim.Optimizer:
    return torch.optim.SGD(_params(), lr=0.1)


SCHEDULES = {
    WarmupCosine: (
        {"warmup_steps": 2, "total_steps": 10},
        {"warmup_steps": Arg(lambda v: integer(0).valid(v) and v < 10, st.integers(0, 9)),
         "total_steps": Arg(lambda v: integer(1).valid(v) and v > 2, st.integers(3, 10**6)),
         "min_lr_ratio": real(0.0, 1.0)},
    ),
    WarmupStableDecay: (
        {"warmup_steps": 2, "stable_steps": 3, "decay_steps": 5},
        {"warmup_steps": integer(0), "stable_steps": integer(0), "decay_steps": integer(1),
         "decay_shape": choice("linear", "cosine", "1-sqrt", "1-square"),
         "min_lr_ratio": real(0.0, 1.0)},
    ),
}  # fmt: skip


@pytest.mark.parametrize("cls", list(SCHEDULES), ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_schedule_accepts_exactly_the_documented_values(cls, data):
    base, spec = SCHEDULES[cls]
    name = data.draw(st.sampled_from(sorted(spec)), label="argument")
    arg = spec[name]
    value = data.draw(ANY | arg.draw, label=name)
    try:
        sched = cls(_sgd(), **{**base, name: value})
    except Exception as exc:  # noqa: BLE001
        _check_refusal(exc, name)
        assert not arg.valid(value), f"{cls.__name__} refused valid {name}={value!r}: {exc}"
        return
    assert arg.valid(value), f"{cls.__name__} accepted invalid {name}={value!r}"
    assert getattr(sched, name) == arg.stored(value)
    for _ in range(3):
        sched.optimizer.step()
        sched.step()
        (lr,) = sched.get_last_lr()
        assert 0.0 <= lr <= 0.1 and math.isfinite(lr)


def _with_grads() -> list[torch.nn.Parameter]:
    params = _params()
    gen = torch.Generator().manual_seed(2)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 10
    return params


def _clip_grad_norm(**kw):
    return clip_grad_norm(_with_grads(), **{"max_norm": 1.0, **kw})


def _agc(**kw):
    return adaptive_clip_grad(_with_grads(), **kw)


def _spike_clipper(**kw):
    params = _with_grads()
    clipper = SpikeClipper(params, **kw)
    for _ in range(3):
        clipper.clip()
    assert all(torch.isfinite(p.grad).all() for p in params)
    return clipper


NORM_TYPE = Arg(lambda v: v == math.inf or real(0.0, low_open=True).valid(v),
                st.floats(1e-3, 1e3) | st.just(math.inf))  # fmt: skip
CLIPPERS = {
    "clip_grad_norm": (_clip_grad_norm, {"max_norm": real(0.0, low_open=True),
                                         "norm_type": NORM_TYPE}),
    "adaptive_clip_grad": (_agc, {"clipping": real(0.0, low_open=True), "eps": real(0.0)}),
    "SpikeClipper": (_spike_clipper, {"theta": real(0.0, low_open=True),
                                      "beta2": real(0.0, 1.0, high_open=True),
                                      "warmup_steps": integer(0, high=5),
                                      "bias_correction": boolean()}),
}  # fmt: skip


@pytest.mark.parametrize("which", list(CLIPPERS))
@SETTINGS
@given(data=st.data())
def test_clipping_accepts_exactly_the_documented_values(which, data):
    call, spec = CLIPPERS[which]
    name = data.draw(st.sampled_from(sorted(spec)), label="argument")
    arg = spec[name]
    value = data.draw(ANY | arg.draw, label=name)
    try:
        out = call(**{name: value})
    except Exception as exc:  # noqa: BLE001
        _check_refusal(exc, name)
        assert not arg.valid(value), f"{which} refused valid {name}={value!r}: {exc}"
        return
    assert arg.valid(value), f"{which} accepted invalid {name}={value!r}"
    if isinstance(out, SpikeClipper):
        assert getattr(out, name) == arg.stored(value)
