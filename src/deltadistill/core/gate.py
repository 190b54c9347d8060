"""A per-layer Gumbel gate that picks one student, trainable end to end by straight-through."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GumbelGate(nn.Module):
    """Hard one-hot choice among ``n`` students.

    Training draws a hard sample with Gumbel noise and passes gradients straight through the soft
    sample. With two students this is exactly the paper's binary Gumbel-sigmoid gate: the
    difference of two Gumbel variables is logistic, so ``softmax([a, b] + g)`` is
    ``sigmoid(b - a + logistic noise)``. Evaluation uses the most probable student, no noise.
    """

    def __init__(self, n: int, init: float = 0.0, prefer: int | None = None) -> None:
        super().__init__()
        logits = torch.zeros(n)
        if prefer is not None:
            logits[prefer] = init
        self.logits = nn.Parameter(logits)

    def probs(self) -> Tensor:
        return self.logits.softmax(-1)

    def choice(self) -> int:
        return int(self.logits.argmax())

    def forward(self, tau: float = 1.0) -> Tensor:
        """Weights over students: a straight-through one-hot sample in training, a hard one-hot in eval."""
        if not self.training:
            return nn.functional.one_hot(self.logits.argmax(), len(self.logits)).to(self.logits.dtype)
        u = torch.rand_like(self.logits).clamp_(1e-6, 1 - 1e-6)
        soft = ((self.logits - torch.log(-torch.log(u))) / tau).softmax(-1)
        hard = nn.functional.one_hot(soft.argmax(), len(soft)).to(soft.dtype)
        return hard - soft.detach() + soft
