"""Byte-level text from source files every Python installation ships."""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from steadygrad.core.checks import positive_int

# Fixed, long-lived standard-library modules, read in this order: the corpus is deterministic
# for a given Python version and needs no download.
STDLIB_FILES = (
    "textwrap.py",
    "string.py",
    "heapq.py",
    "bisect.py",
    "fractions.py",
    "difflib.py",
    "argparse.py",
    "dataclasses.py",
    "functools.py",
    "calendar.py",
)


def stdlib_text(max_bytes: int | None = None) -> bytes:
    """The concatenated source of :data:`STDLIB_FILES`, optionally truncated.

    Example:
        >>> len(stdlib_text(max_bytes=1000))
        1000
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks = []
    for name in STDLIB_FILES:
        path = root / name
        if path.exists():
            chunks.append(path.read_bytes())
    if not chunks:
        raise FileNotFoundError(f"no standard-library source files found under {root}")
    text = b"\n".join(chunks)
    if max_bytes is not None:
        text = text[: positive_int("max_bytes", max_bytes)]
    return text


@dataclass
class TextData:
    """Byte tokens (vocabulary 256) split into a training and a validation part.

    Example:
        >>> data = TextData.from_stdlib()
        >>> x, y = data.batch(4, 32, generator=torch.Generator().manual_seed(0))
        >>> x.shape, y.shape
        (torch.Size([4, 32]), torch.Size([4, 32]))
    """

    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int = 256

    @classmethod
    def from_stdlib(cls, max_bytes: int | None = None, val_fraction: float = 0.1) -> TextData:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        tokens = torch.frombuffer(bytearray(stdlib_text(max_bytes)), dtype=torch.uint8).long()
        n_val = max(1, int(len(tokens) * val_fraction))
        return cls(train=tokens[:-n_val], val=tokens[-n_val:])

    def batch(
        self,
        batch_size: int,
        block_size: int,
        split: str = "train",
        generator: torch.Generator | None = None,
        with_ids: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Random windows ``x`` and their next-token targets ``y`` (and, with ``with_ids``, each
        window's start offset, to trace a step back to its data)."""
        batch_size = positive_int("batch_size", batch_size)
        block_size = positive_int("block_size", block_size)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        tokens = self.train if split == "train" else self.val
        if len(tokens) <= block_size + 1:
            raise ValueError(f"block_size {block_size} is too long for {len(tokens)} tokens")
        starts = torch.randint(len(tokens) - block_size - 1, (batch_size,), generator=generator)
        offsets = torch.arange(block_size)
        x = tokens[starts[:, None] + offsets]
        y = tokens[starts[:, None] + offsets + 1]
        return (x, y, starts) if with_ids else (x, y)
