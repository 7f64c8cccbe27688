"""Block-wise 8-bit storage for optimizer states (Dettmers et al., 2022, arXiv 2110.02861).

A state tensor is cut into blocks of ``BLOCK_SIZE`` entries; each block is divided by its
absolute maximum and every entry is replaced by the index of the nearest value of a 256-entry
*dynamic tree* map. The map spends its codes on a wide dynamic range: for exponent ``e`` in
0..6 it holds the midpoints of an even split of [0.1, 1] scaled by ``10**(e-6)``, with ``2**e``
midpoints per decade in the signed map (mirrored to negative values) and ``2**(e+1)`` in the
unsigned map; 0 and 1 complete the 256 codes. First moments use the signed map, second moments
(non-negative) the unsigned one, which gives them twice the resolution.
"""

from __future__ import annotations

import functools

import torch

BLOCK_SIZE = 2048
# Tensors smaller than this keep 32-bit states: the saving is negligible and small tensors
# (biases, norms) are the most sensitive to quantisation error.
MIN_NUMEL = 4096


@functools.cache
def dynamic_map(signed: bool) -> torch.Tensor:
    """The sorted 256 values of the dynamic tree quantisation map, in [-1, 1] or [0, 1]."""
    values: list[float] = [0.0, 1.0]
    for exponent in range(7):
        per_decade = 2**exponent if signed else 2 ** (exponent + 1)
        edges = torch.linspace(0.1, 1.0, per_decade + 1, dtype=torch.float64)
        mids = ((edges[:-1] + edges[1:]) / 2 * 10.0 ** (exponent - 6)).tolist()
        values += mids
        if signed:
            values += [-v for v in mids]
    if len(values) != 256:  # pragma: no cover - guards the construction above
        raise AssertionError(f"dynamic map has {len(values)} values, expected 256")
    return torch.tensor(sorted(values), dtype=torch.float32)


@functools.cache
def _midpoints(signed: bool) -> torch.Tensor:
    code = dynamic_map(signed)
    return (code[1:] + code[:-1]) / 2


def _blocks(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1).float()
    pad = (-flat.numel()) % BLOCK_SIZE
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, BLOCK_SIZE)


def quantize(x: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(codes, absmax)``: uint8 codes (padded to whole blocks) and one scale per block."""
    blocks = _blocks(x)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax)).unsqueeze(1)
    mids = _midpoints(signed).to(x.device)
    codes = torch.bucketize(scaled.contiguous(), mids).to(torch.uint8)
    return codes.view(-1), absmax


def dequantize(
    codes: torch.Tensor, absmax: torch.Tensor, shape: torch.Size, signed: bool
) -> torch.Tensor:
    """Inverse of :func:`quantize`: a float32 tensor of ``shape``."""
    code = dynamic_map(signed).to(codes.device)
    values = code[codes.long()].view(-1, BLOCK_SIZE) * absmax.unsqueeze(1)
    n = 1
    for s in shape:
        n *= s
    return values.view(-1)[:n].view(shape)


def state_bytes(state: dict) -> int:
    """Bytes held by the tensors of one parameter's optimizer state."""
    return sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
