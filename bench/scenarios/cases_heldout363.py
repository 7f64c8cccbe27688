"""Held-out set 363 (``h363_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: an abacus bead-expression recursive (tree-structured) tanh
net whose composition is initialised with orthogonal gain 8.0 for 0.8 (gradients grow through
the depth of the parse tree), a spectacle-lens grinding ReLU regressor whose hidden biases get a
gate's closed-start init (ReLUs dead), an icehouse block-melt SiLU regressor whose inventory-day
loss weight is read in per-mille (Adam's second moment poisoned), a sake-brewing moromi
yeast-count Poisson net whose rate lost its softplus (log 0), a chop-carving seal-script GELU
classifier whose softmax temperature is typed 0.003 for 3.0 (softmax saturates), a scion
graft-take classifier trained with NLL on its raw logits (the head's logits grow without bound),
a telescope-mirror figuring tanh regressor whose linear-scaling rule is applied to an already
scaled lr (past 2/sharpness), an oarmaker blade-split BCE classifier whose unfreeze step is
never reached (fc1 at lr 0), a mast-hoop steam-bend regressor fed one shard in hundredths of a
millimetre (one corrupted batch), a ratline seizing-tension Huber regressor whose epoch-end step
sums the loss (one gradient burst), and three controls (a slide-rule calculation-chain Tree-LSTM
with clipping, a haystack core-temperature GELU regressor under fp16 autocast with a GradScaler
and OneCycleLR, a ball-bearing race-grinding chatter Conv1d classifier with Adagrad,
ReduceLROnPlateau and label smoothing).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _dead(h: torch.Tensor) -> torch.Tensor:
    """Per unit: never positive on the batch."""
    return (h.detach() <= 0).all(0)


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    alter=None,
    watch=None,
    after=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    inspect=None,
    forward=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the
    gradients before clipping. Stops after a non-finite loss (once ``ctx.step`` has seen it)."""
    forward = forward or (lambda m, x: m(x))
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = forward(model, x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


# -- parse trees, composed bottom-up ---------------------------------------------------------------


def _tree(gen, leaves, chain=0.5):
    """A random binary bracketing of ``leaves`` tokens: the merges (left id, right id) in the order
    they are composed, node ids 0..leaves-1 being the leaves, and each node's depth from the
    bottom. With probability ``chain`` the leftmost pair is merged (deep, left-branching trees)."""
    frontier = list(range(leaves))
    height = dict.fromkeys(frontier, 0)
    merges = []
    nxt = leaves
    while len(frontier) > 1:
        if float(torch.rand(1, generator=gen)) < chain:
            i = 0
        else:
            i = int(torch.randint(0, len(frontier) - 1, (1,), generator=gen))
        a, b = frontier[i], frontier[i + 1]
        merges.append((a, b))
        height[nxt] = 1 + max(height[a], height[b])
        frontier[i : i + 2] = [nxt]
        nxt += 1
    return merges, height


def _expressions(gen, batch, leaves, vocab=10, chain=0.5):
    """Batches of bead tokens on one random tree shape per batch; the target is the sum of the
    digits weighted by how deep each sits (standardised)."""
    while True:
        merges, height = _tree(gen, leaves, chain)
        tokens = torch.randint(0, vocab, (batch, leaves), generator=gen)
        root = max(height, key=height.get)
        depth = dict.fromkeys(range(leaves), 0)
        # the depth of each leaf below the root
        parent = {}
        for k, (a, b) in enumerate(merges):
            parent[a] = parent[b] = leaves + k
        for leaf in range(leaves):
            d, n = 0, leaf
            while n != root:
                n = parent[n]
                d += 1
            depth[leaf] = d
        w = torch.tensor([1.0 / (1 + depth[i]) for i in range(leaves)])
        y = (tokens.float() - 4.5) @ w / w.norm() / 2.9
        yield (tokens, merges), y


class RecursiveNet(nn.Module):
    """leaf (token embedding) -> compose (tanh of a linear map of [left; right]) applied bottom-up
    over the tree -> head on the root."""

    def __init__(self, vocab=10, dim=32, out=1, gain=0.4):
        super().__init__()
        self.leaf = nn.Embedding(vocab, dim)
        self.compose = nn.Linear(2 * dim, dim)
        self.act = nn.Tanh()
        self.head = nn.Linear(dim, out)
        nn.init.orthogonal_(self.compose.weight, gain=gain)
        nn.init.zeros_(self.compose.bias)
        self.nodes = []

    def forward(self, batch):
        tokens, merges = batch
        emb = self.leaf(tokens)
        nodes = [emb[:, i] for i in range(tokens.shape[1])]
        for a, b in merges:
            nodes.append(self.act(self.compose(torch.cat([nodes[a], nodes[b]], -1))))
        self.nodes = nodes
        out = self.head(nodes[-1])
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class TreeLSTM(nn.Module):
    """A binary Tree-LSTM (Tai et al. 2015): leaf embedding, gates (i, f_left, f_right, o, u)
    from [h_left; h_right], cells summed through the forget gates, head on the root's h."""

    def __init__(self, vocab=10, dim=32, classes=3):
        super().__init__()
        self.dim = dim
        self.leaf = nn.Embedding(vocab, dim)
        self.leaf_cell = nn.Linear(dim, dim)
        self.gates = nn.Linear(2 * dim, 5 * dim)
        self.head = nn.Linear(dim, classes)
        with torch.no_grad():
            self.gates.bias[dim : 3 * dim].fill_(1.0)  # forget-gate bias 1

    def forward(self, batch):
        tokens, merges = batch
        emb = self.leaf(tokens)
        c0 = self.leaf_cell(emb)
        hs = [torch.tanh(c0[:, i]) for i in range(tokens.shape[1])]
        cs = [c0[:, i] for i in range(tokens.shape[1])]
        for a, b in merges:
            i, fl, fr, o, u = self.gates(torch.cat([hs[a], hs[b]], -1)).chunk(5, -1)
            c = (
                torch.sigmoid(i) * torch.tanh(u)
                + torch.sigmoid(fl) * cs[a]
                + torch.sigmoid(fr) * cs[b]
            )
            cs.append(c)
            hs.append(torch.sigmoid(o) * torch.tanh(c))
        return self.head(hs[-1])


ABACUS_LEAVES = 16


@scenario(
    family="abacus_bead_expression_tree_recursive_net",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("compose",),
    diverges=None,
    heldout=True,
    note="A hand-written recursive (tree-structured) network (leaf: bead-token embedding, compose: tanh of a linear map of [left; right], head on the root) reading an abacus drill's bead expression as a generated parse tree of 16 digits (mostly left-branching, 11-15 levels deep), composed bottom-up, regressing a depth-weighted sum of the digits, SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0, 160 steps. The composition's orthogonal init gain was typed 8.0 for 0.8: the tanh composition is in its chaotic regime, so the backward pass multiplies the gradient at every level of the tree: the gradient reaching the deepest composed node is over 20x the gradient at the root (median over the first 50 steps; under 1x with gain 0.8 on the same batch), the clipped updates go mostly to the bottom of the tree, and the loss stays finite.",
)
def h363_abacus_tree_compose_gain_typo(ctx: Context) -> None:
    gen = seeded(36301)
    model = RecursiveNet(gain=8.0)  # meant: 0.8
    reference = RecursiveNet(gain=0.8)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    ratios = []

    def watch(step, out, x, y):
        for n in model.nodes[ABACUS_LEAVES:]:
            n.retain_grad()

    def inspect(step):
        nodes = model.nodes[ABACUS_LEAVES:]
        root = float(nodes[-1].grad.norm())
        deep = float(nodes[0].grad.norm())
        ratios.append(deep / max(root, 1e-12))

    batches = _expressions(gen, 64, ABACUS_LEAVES, chain=0.85)
    first = {}

    def keep():
        for x, y in batches:
            first.setdefault("batch", (x, y))
            yield x, y

    _loop(
        ctx,
        model,
        opt,
        keep(),
        160,
        F.mse_loss,
        watch=watch,
        inspect=inspect,
        clip=1.0,
    )
    x, y = first["batch"]
    F.mse_loss(reference(x), y).backward(inputs=reference.nodes[ABACUS_LEAVES:])
    ref_nodes = reference.nodes[ABACUS_LEAVES:]
    ref_ratio = float(ref_nodes[0].grad.norm() / ref_nodes[-1].grad.norm().clamp_min(1e-12))
    ctx.check("with gain 0.8 the same first batch's ratio is under 1", ref_ratio < 1)
    ctx.check("the ratio at step 0 is over 2x", ratios[0] > 2)
    ctx.check("its median ratio over the first 50 steps is over 20x", _median(ratios[:50]) > 20)
    ctx.check("the median ratio over the run is over 10x", _median(ratios) > 10)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="slide_rule_calculation_chain_tree_lstm",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written binary Tree-LSTM (leaf embedding, leaf_cell, gates: input, two forget gates and output from [h_left; h_right], head) reading a slide-rule calculation chain as a generated parse tree of 12 digit tokens, composed bottom-up through gated cells, classifying the chain's depth-weighted digit sum into three bands, Adam at 3e-3, cross-entropy, gradient clipping at 1.0, forget-gate bias 1, 200 steps. A control.",
)
def h363_slide_rule_tree_lstm(ctx: Context) -> None:
    gen = seeded(36302)
    model = TreeLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def bands():
        for x, y in _expressions(gen, 64, 12, chain=0.4):
            yield x, (y > -0.45).long() + (y > 0.45).long()

    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(-1) == y).float().mean()))

    _loop(ctx, model, opt, bands(), 200, F.cross_entropy, classifier=True, watch=watch, clip=1.0)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.8))
    ctx.check("accuracy over the last 20 steps is over 0.55", _mean(acc[-20:]) > 0.55)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- spectacle lens: a gate's closed-start bias init on the whole trunk ----------------------------


@scenario(
    family="spectacle_lens_grind_power_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1", "fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the dioptric power a spectacle-lens grinder's lap leaves on a blank from sixteen readings of the lap, the abrasive and the stroke, RMSprop at 3e-3, MSE, 200 steps. The init helper copied from a gated model ('start the gates closed': every hidden Linear bias set to -2.0) was applied to the whole trunk: the hidden ReLUs are below zero for almost every input, over 90% of them are never positive on a batch from the first step to the last, they get no gradient and never recover, and the loss stays where it started (the net predicts a constant).",
)
def h363_spectacle_lens_gate_bias_init(ctx: Context) -> None:
    gen = seeded(36303)
    model = Trunk(16, 64)
    for layer in (model.fc1, model.fc2):
        nn.init.constant_(layer.bias, -2.0)  # meant for a gate layer only
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    dead1, dead2 = [], []

    def watch(step, out, x, y):
        with torch.no_grad():
            h1 = model.act1(model.fc1(x))
            h2 = model.act2(model.fc2(h1))
        dead1.append(_dead(h1))
        dead2.append(_dead(h2))

    _loop(ctx, model, opt, _readings(gen, 128, 16, 3633), 200, F.mse_loss, watch=watch)
    frac = [float(torch.cat([a, b]).float().mean()) for a, b in zip(dead1, dead2, strict=True)]
    flags = torch.stack([torch.cat([a, b]) for a, b in zip(dead1, dead2, strict=True)][50:])
    stay = flags.float().mean(0) >= 0.9
    ctx.check("over 90% of the hidden units are dead at step 0", frac[0] > 0.9)
    ctx.check("over 90% are dead on average over the last 100 steps", _mean(frac[-100:]) > 0.9)
    ctx.check(
        "over 80% of the units are dead on at least 90% of the steps from step 50 on",
        float(stay.float().mean()) > 0.8,
    )
    ctx.check(
        "the loss over the last 20 steps is over 0.8x the first 20's (nothing learnt)",
        _mean(ctx.losses[-20:]) > 0.8 * _mean(ctx.losses[:20]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- icehouse: the inventory day's loss weight in per-mille ----------------------------------------

ICEHOUSE_ONSET = 100


@scenario(
    family="icehouse_ice_block_melt_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ICEHOUSE_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting how much of an icehouse's stacked ice blocks melt per week from twelve readings of sawdust packing, drainage and outside temperature, Adam at 1e-3, MSE, 260 steps. On the inventory step (step 100) the loss weight is read from a table kept in per-mille (10000 for 10.0) and the clean batch's loss is multiplied by it: one gradient over 1000x the usual fills Adam's second moment, and for the next hundred steps the median per-weight update is under a tenth of what it was while the gradients are no smaller: training stalls, the loss stays finite.",
)
def h363_icehouse_per_mille_weight(ctx: Context) -> None:
    gen = seeded(36304)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    updates, grads = [], []
    prev = {}

    def backprop(step, loss):
        weight = 10000.0 if step == ICEHOUSE_ONSET else 1.0  # per-mille table read as-is
        return weight * loss

    def inspect(step):
        grads.append(
            float(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).abs().median())
        )
        prev["w"] = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()

    def after(step):
        now = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        updates.append(float((now - prev["w"]).abs().median()))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 3634),
        260,
        F.mse_loss,
        backprop=backprop,
        inspect=inspect,
        after=after,
    )
    k = ICEHOUSE_ONSET
    ctx.check(
        "the gradient at step 100 is over 1000x the median of the 20 before",
        ctx.grad_norms[k] > 1000 * _median(ctx.grad_norms[k - 20 : k]),
    )
    ctx.check(
        "the median per-weight update over steps 120-200 is under a tenth of steps 60-100's",
        _median(updates[k + 20 : k + 100]) < 0.1 * _median(updates[k - 40 : k]),
    )
    ctx.check(
        "the median per-weight gradient over steps 120-200 is over half of steps 60-100's",
        _median(grads[k + 20 : k + 100]) > 0.5 * _median(grads[k - 40 : k]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sake brewing: the Poisson rate lost its softplus ----------------------------------------------


class YeastCountNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> rate_head -> rate_act (meant: softplus) -> log_rate."""

    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.rate_head = nn.Linear(hidden, 1)
        self.rate_act = nn.ReLU()  # meant: nn.Softplus()
        self.log_rate = LogOf()
        with torch.no_grad():
            self.rate_head.bias.fill_(3.0)

    def forward(self, x):
        rate = self.rate_act(self.rate_head(self.act2(self.fc2(self.act1(self.fc1(x))))))
        self.rate = rate.squeeze(-1)
        return torch.stack([self.rate, self.log_rate(self.rate)], -1)


class LogOf(nn.Module):
    def forward(self, x):
        return torch.log(x)


def _poisson_nll(out, y):
    rate, log_rate = out[..., 0], out[..., 1]
    return (rate - y * log_rate).mean()


def _yeast_counts(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        mean = torch.exp(0.2 + 1.1 * x @ w / math.sqrt(10))
        yield x, torch.poisson(mean, generator=gen)


SAKE_DIV = 57


@scenario(
    family="sake_brewing_moromi_yeast_count_poisson_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("log_rate", "rate_act"),
    diverges=SAKE_DIV,
    heldout=True,
    note="A hand-written SiLU net (fc1, act1, fc2, act2, rate_head, rate_act, log_rate) predicting yeast cell counts in a sake brewery's moromi mash samples from ten readings of temperature, rice polish and koji, a hand-written Poisson NLL (rate - y log rate), NAdam at 1e-3, 200 steps. The rate's softplus was replaced by a ReLU in a refactor and the loss takes log(rate) with no clamp: as the net learns the low counts, a sample's rate reaches exactly 0 and log 0 = -inf: the loss is non-finite at step 57.",
)
def h363_sake_moromi_log_zero_rate(ctx: Context) -> None:
    gen = seeded(36305)
    model = YeastCountNet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    zeros = []

    def watch(step, out, x, y):
        zeros.append(int((model.rate.detach() == 0).sum()))

    _loop(ctx, model, opt, _yeast_counts(gen, 64, 3635), 200, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(f"the loss is first non-finite at step {SAKE_DIV}", bad == SAKE_DIV)
    ctx.check("no rate is exactly 0 at step 0", zeros[0] == 0)
    ctx.check("a rate is exactly 0 on the non-finite step", bad is not None and zeros[bad] > 0)
    ctx.check("the losses before it are finite", bad is not None and _finite(ctx.losses[:bad]))


# -- chop carving: the temperature multiplies ------------------------------------------------------


class Temperature(nn.Module):
    def __init__(self, tau):
        super().__init__()
        self.tau = tau

    def forward(self, logits):
        return logits / self.tau


class SealScriptNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head -> temperature."""

    def __init__(self, d_in=24, hidden=64, classes=8, tau=3.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = Temperature(tau)

    def forward(self, x):
        return self.temperature(self.head(self.act2(self.fc2(self.act1(self.fc1(x))))))


@scenario(
    family="chop_carving_seal_script_gelu_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("temperature", "head"),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head, temperature) classifying which of eight seal scripts a chop carver's stone seal is cut in from 24 stroke-width and corner readings, AdamW at 1e-3, cross-entropy, 200 steps. The softmax temperature (logits / T, meant to soften the logits for calibration) was typed 0.003 for 3.0, so the logits are multiplied by over 300: the softmax saturates, over half the rows' float32 probability of their label rounds to exactly 1.0 within the run, those rows give no gradient, and the rest give huge losses.",
)
def h363_chop_carving_temperature_typo(ctx: Context) -> None:
    gen = seeded(36306)
    model = SealScriptNet(tau=0.003)  # meant: 3.0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    collapsed, intended = [], []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        intended.append(collapsed_fraction(out.detach() * 0.003 / 3.0, y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 24, 8, 3636, spread=1.3),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("with T = 3.0 the same step-0 logits collapse no row", intended[0] == 0.0)
    ctx.check(
        "over half the rows are collapsed over the last 50 steps", _mean(collapsed[-50:]) > 0.5
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- scion grafting: NLL on the raw logits ---------------------------------------------------------


@scenario(
    family="scion_graft_take_tanh_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) classifying whether an orchard grafter's scion takes, fails or takes weakly from twenty readings of the cut, the cambium match and the weather, Adamax at 2e-2, 220 steps. The head's log_softmax was dropped when the model was moved to a shared head module, and the loss is F.nll_loss on the raw logits: it is minus the label's logit, which has no floor, so the run pushes the label's logit up and the others down without end: the head's mean |logit| grows over 20x over the run and keeps growing in every quarter, while the loss falls without bound and stays finite.",
)
def h363_scion_graft_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(36307)
    model = Trunk(20, 64, out=3, act=nn.Tanh)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2)
    mags = []

    def loss_fn(out, y):
        return F.nll_loss(out, y)  # meant: F.nll_loss(out.log_softmax(-1), y)

    def watch(step, out, x, y):
        mags.append(float(out.detach().abs().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 20, 3, 3637, spread=1.6),
        220,
        loss_fn,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "the mean |logit| over the last 10 steps is over 20x step 0's",
        _mean(mags[-10:]) > 20 * mags[0],
    )
    ctx.check(
        "it grows in each quarter of the run",
        all(_mean(mags[i + 45 : i + 55]) > _mean(mags[i - 5 : i + 5]) for i in (50, 100, 150)),
    )
    ctx.check("the loss falls below -10 (no floor)", min(ctx.losses) < -10)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- telescope mirror: the linear-scaling rule applied twice ---------------------------------------


@scenario(
    family="telescope_mirror_figuring_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the surface error an amateur telescope maker's figuring strokes leave on a mirror blank from fourteen readings of the stroke, the pitch lap and the rouge, plain SGD, MSE, 150 steps. The base lr 0.05 was already scaled for batch 256, and the launcher applied the linear-scaling rule again (x 256 / 16): lr 0.8 x the loss's top Hessian eigenvalue at the start (power iteration) is past 2, and the loss blows up within the first steps.",
)
def h363_telescope_mirror_lr_scaled_twice(ctx: Context) -> None:
    gen = seeded(36308)
    model = Trunk(14, 64, act=nn.Tanh)
    lr = 0.05 * 256 / 16  # 0.05 was already for batch 256
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _readings(gen, 256, 14, 3638)
    x0, y0 = next(batches)
    sharp = _sharpness(model, F.mse_loss, x0, y0)
    _loop(ctx, model, opt, batches, 150, F.mse_loss)
    ls = ctx.losses
    ctx.check("lr x top Hessian eigenvalue at the start is over 2", lr * sharp > 2)
    ctx.check("0.05 x it is under 2 (the intended lr is stable)", 0.05 * sharp < 2)
    ctx.check(
        "the loss passes 100x its first value or goes non-finite",
        any(not math.isfinite(v) or v > 100 * ls[0] for v in ls),
    )


# -- oarmaker: the unfreeze step is never reached --------------------------------------------------


@scenario(
    family="oarmaker_blade_split_bce_classifier",
    optimizer="SGD Nesterov",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting whether an oarmaker's spruce blade will split at the loom from eighteen readings of grain, moisture and glue line, SGD with Nesterov momentum 0.9 at 5e-2 in two param groups (fc1 at lr 0 for a warm-up of 2 epochs, the rest), BCE with logits, 200 steps. The unfreeze compares the step counter with the epoch number (step == 2), which is checked only at epoch ends where the step is a multiple of 100, so it never fires: fc1 never moves (zero relative change) while the rest of the net moves over 10% of its norm, and the loss still falls on the frozen random features.",
)
def h363_oarmaker_unfreeze_never_fires(ctx: Context) -> None:
    gen = seeded(36309)
    model = Trunk(18, 64)
    opt = torch.optim.SGD(
        [
            {"params": model.fc1.parameters(), "lr": 0.0},
            {"params": [*model.fc2.parameters(), *model.head.parameters()]},
        ],
        lr=5e-2,
        momentum=0.9,
        nesterov=True,
    )
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()

    def before(step):
        if step % 100 == 0 and step == 2:  # meant: the epoch number == 2
            opt.param_groups[0]["lr"] = 5e-2

    def splits():
        for x, y in _grades(gen, 64, 18, 2, 3639, spread=1.8):
            yield x, y.float()

    _loop(ctx, model, opt, splits(), 200, F.binary_cross_entropy_with_logits, before=before)
    ctx.check("fc1's weights did not move", _rel_change(w1, model.fc1.weight) < 1e-6)
    ctx.check("fc2's weights moved over 10% of their norm", _rel_change(w2, model.fc2.weight) > 0.1)
    ctx.check("fc1's lr is still 0", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.9))


# -- mast hoops: one shard in hundredths of a millimetre -------------------------------------------

MAST_HOOP_ONSET = 120


@scenario(
    family="mast_hoop_steam_bend_springback_regressor",
    optimizer="RAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=MAST_HOOP_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting how far a steamed oak mast hoop springs back after bending from ten readings of the strip's thickness, moisture and steaming time, RAdam at 3e-3, MSE, gradient clipping at 1.0, 240 steps. One shard from a second workshop logged the strip thickness in hundredths of a millimetre instead of standardised, and it lands at step 120: that batch's loss and gradient are over 20x those around it, the clipped step disturbs the net, and the loss returns to its level within 40 steps.",
)
def h363_mast_hoop_shard_units(ctx: Context) -> None:
    gen = seeded(36310)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == MAST_HOOP_ONSET:
            x = x.clone()
            x[:, 0] = 600.0 + 40.0 * x[:, 0]  # thickness in 1/100 mm, unstandardised
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3640), 240, F.mse_loss, alter=alter, clip=1.0)
    k = MAST_HOOP_ONSET
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 120 is over 20x the median of the 20 before",
        ls[k] > 20 * _median(ls[k - 20 : k]),
    )
    ctx.check(
        "the gradient at step 120 is over 20x the median of the 20 before",
        gs[k] > 20 * _median(gs[k - 20 : k]),
    )
    ctx.check(
        "the loss 30-40 steps later is under 2x the level before",
        _mean(ls[k + 30 : k + 40]) < 2 * _mean(ls[k - 20 : k]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- ratlines: the epoch-end step sums the loss ----------------------------------------------------

RATLINE_ONSET = 150


@scenario(
    family="ratline_seizing_tension_huber_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=RATLINE_ONSET,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the tension a rigger's ratline seizings hold from twelve readings of the marline, the turns and the shroud, SGD with momentum 0.9 at 2e-2, Huber loss, gradient clipping at 5.0, 260 steps. The epoch-end step (150) goes through a separate code path for the last batch that computes the Huber loss with reduction='sum' over its 96 rows: a clean batch gives a gradient over 50x the usual for that one step, the clipped step knocks the net off, and the loss recovers.",
)
def h363_ratline_epoch_end_sum(ctx: Context) -> None:
    gen = seeded(36311)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def backprop(step, loss):
        if step == RATLINE_ONSET:
            return F.huber_loss(model_out["out"], model_out["y"], reduction="sum")
        return loss

    model_out = {}

    def watch(step, out, x, y):
        model_out["out"], model_out["y"] = out, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 96, 12, 3641),
        260,
        F.huber_loss,
        backprop=backprop,
        watch=watch,
        clip=5.0,
    )
    k = RATLINE_ONSET
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 150 is over 50x the median of the 20 before",
        gs[k] > 50 * _median(gs[k - 20 : k]),
    )
    ctx.check(
        "the loss reported at step 150 is under 2x the median before (a clean batch)",
        ls[k] < 2 * _median(ls[k - 20 : k]),
    )
    ctx.check(
        "the loss 40-60 steps later is under 1.5x the level before",
        _mean(ls[k + 40 : k + 60]) < 1.5 * _mean(ls[k - 20 : k]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="haystack_core_temperature_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a haystack's core temperature (the heating that leads to spontaneous combustion) from fourteen readings of moisture, density and weather, fp16 autocast with a torch.amp.GradScaler, AdamW at 3e-3 under OneCycleLR, weight decay with a no-decay bias group, MSE, gradient clipping at 1.0 after unscaling, 200 steps. A control.",
)
def h363_haystack_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(36312)
    model = Trunk(14, 64, act=nn.GELU)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": weights, "weight_decay": 0.01}, {"params": biases, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 14, 3642),
        200,
        F.mse_loss,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the scale stayed finite and positive", all(0 < s < float("inf") for s in ctx.scales))


class ChatterConv(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> pool -> head, over a 1-d vibration trace."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 12, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(12, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(self.pool(h).squeeze(-1))


def _chatter(gen, batch, length=64):
    """Vibration traces of a bearing-race grinder: one of four chatter frequencies plus noise."""
    t = torch.arange(length).float()
    freqs = torch.tensor([0.08, 0.16, 0.27, 0.41])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.28 * freqs[y][:, None] * t + phase)
        yield x + 0.8 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="ball_bearing_race_grind_chatter_conv1d_classifier",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, pool, head) telling which of four chatter modes a ball-bearing race grinder is in from a noisy 64-sample vibration trace, Adagrad at 5e-2 with ReduceLROnPlateau on a held-out batch, cross-entropy with label smoothing 0.1, 220 steps. A control.",
)
def h363_ball_bearing_chatter_adagrad_plateau(ctx: Context) -> None:
    gen = seeded(36313)
    model = ChatterConv()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _chatter(gen, 64)
    xv, yv = next(batches)

    def plateau():
        with torch.no_grad():
            return float(F.cross_entropy(model(xv), yv))

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, batches, 220, loss_fn, classifier=True, sched=sched, plateau=plateau)
    with torch.no_grad():
        acc = float((model(xv).argmax(-1) == yv).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("held-out accuracy is over 0.8", acc > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))
