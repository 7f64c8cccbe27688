"""A replay buffer for continual learning: reservoir sampling over everything seen.

Experience replay (Chaudhry et al. 2019, "On tiny episodic memories in continual learning")
keeps a small memory of past examples and mixes some into every batch. Reservoir sampling
(Vitter 1985) keeps each example of the stream with the same probability ``capacity / seen``,
without knowing the stream's length or its task boundaries.
"""

from __future__ import annotations

import torch

from steadygrad.core.checks import non_negative_int, positive_int


class ReplayBuffer:
    """Up to ``capacity`` past ``(input, target)`` examples, a uniform sample of all added.

    Example:
        >>> buffer = ReplayBuffer(capacity=100, seed=0)
        >>> buffer.add(torch.randn(32, 8), torch.randint(10, (32,)))
        >>> x, y = buffer.mix(torch.randn(16, 8), torch.randint(10, (16,)), k=8)
        >>> x.shape, len(buffer)
        (torch.Size([24, 8]), 32)
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = positive_int("capacity", capacity)
        self.generator = torch.Generator().manual_seed(seed)
        self.seen = 0
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Offer a batch to the reservoir (stored detached)."""
        if len(x) != len(y):
            raise ValueError(f"x and y must hold as many examples, got {len(x)} and {len(y)}")
        x, y = x.detach(), y.detach()
        if self._x is None:
            self._x = x.new_empty((self.capacity, *x.shape[1:]))
            self._y = y.new_empty((self.capacity, *y.shape[1:]))
        for i in range(len(x)):
            if self._size < self.capacity:
                slot = self._size
                self._size += 1
            else:
                slot = int(torch.randint(self.seen + 1, (1,), generator=self.generator))
            if slot < self.capacity:
                self._x[slot], self._y[slot] = x[i], y[i]
            self.seen += 1

    def sample(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` stored examples drawn uniformly with replacement."""
        k = positive_int("k", k)
        if not self._size:
            raise ValueError("the buffer is empty: add examples before sampling")
        idx = torch.randint(self._size, (k,), generator=self.generator)
        return self._x[idx], self._y[idx]

    def mix(self, x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch with ``k`` replayed examples appended (unchanged while the buffer is
        empty or ``k`` is 0)."""
        k = non_negative_int("k", k)
        if not self._size or not k:
            return x, y
        rx, ry = self.sample(k)
        return torch.cat([x, rx.to(x.device)]), torch.cat([y, ry.to(y.device)])
