"""Focal loss with inverse-frequency class weights.

    FL(p_y) = -alpha_y * (1 - p_y) ** gamma * log(p_y), averaged over the batch

With gamma 0 and no alpha it is cross-entropy. Example:
    >>> alpha = inverse_frequency_weights(train_labels, n_classes=6)
    >>> loss = focal_loss(logits, labels, alpha=alpha, gamma=2.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def inverse_frequency_weights(labels: list[int], n_classes: int) -> torch.Tensor:
    """alpha_c = N / (C * n_c): 1 for every class when balanced; absent classes get 0."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=n_classes).float()
    present = counts > 0
    alpha = torch.zeros(n_classes)
    alpha[present] = counts.sum() / (present.sum() * counts[present])
    return alpha


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor | None = None,
               gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss. logits (B, C), target (B,), alpha (C,) or None."""
    logp = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)  # (B,)
    loss = -((1.0 - logp.exp()) ** gamma) * logp
    if alpha is not None:
        loss = alpha.to(logits.dtype)[target] * loss
    return loss.mean()


def mixed_focal_loss(logits: torch.Tensor, target: torch.Tensor, other: torch.Tensor, lam: float,
                     alpha: torch.Tensor | None = None, gamma: float = 2.0) -> torch.Tensor:
    """The focal loss of a mixup batch: ``lam`` of the clips' own labels', ``1 - lam`` of their
    partners' (``trainer.prepare.mix``); the plain focal loss when ``lam`` is 1."""
    loss = focal_loss(logits, target, alpha, gamma)
    return loss if lam == 1.0 else lam * loss + (1.0 - lam) * focal_loss(logits, other, alpha,
                                                                          gamma)


def training_loss(model, batch: dict, other: torch.Tensor, lam: float,
                  alpha: torch.Tensor | None, gamma: float) -> torch.Tensor:
    """The loss of one training step. A hybrid with a synchrony head (``model.sync``) is
    scored on its logits, and its head also on the head's own logits: once the rest of the
    model fits its training clips, the sum's loss no longer teaches the head anything."""
    if getattr(model, "sync", None) is None:
        return mixed_focal_loss(model(**batch), batch["label"], other, lam, alpha, gamma)
    rest, head = model(**batch, parts=True)
    return (mixed_focal_loss(rest + model.sync_weight * head, batch["label"], other, lam, alpha,
                             gamma)
            + mixed_focal_loss(head, batch["label"], other, lam, alpha, gamma))
