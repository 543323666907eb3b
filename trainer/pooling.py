"""Summaries of a padded batch over each clip's real frames: (B, T, C) with a (B, T) mask of
real frames in, (B, C) out. The model's pooling and its linear head's features both read them.

    >>> x, mask = torch.tensor([[[1.0], [3.0], [99.0]]]), torch.tensor([[True, True, False]])
    >>> masked_mean(x, mask), masked_max(x, mask)
    (tensor([[2.]]), tensor([[3.]]))
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real frames: (B, T, C) -> (B, C)."""
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def mean_std(x: torch.Tensor, mask: torch.Tensor,
             eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over real frames: (B, T, C) -> (B, C), (B, C). ``eps``
    inside the square root keeps its gradient finite on a constant feature."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean[:, None]) ** 2, mask)
    return mean, (var + eps).sqrt()


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over real frames: (B, T, C) -> (B, C); brief events survive it, unlike the mean."""
    # max with indices, not amax: backward then keeps the (B, C) indices, not (B, T, C) values
    return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values
