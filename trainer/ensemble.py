"""Several models read as one: the mean of their class probabilities (``--ensemble N``).

Each member is a whole model (a hybrid, or the lstm) trained as a run of its own, with its
own seed, best epoch and synchrony-head weight (``trainer.train_members``). The ensemble's
output is the log of the members' mean probability, so ``softmax`` of it is that mean, and
everything that reads logits (``evaluate``, ``predict``, ``export``) reads an ensemble as it
reads one model. Why: on the robustness suite's hard profiles the members' errors on held-out
speakers are partly independent, and their mean is right more often than any one of them
(docs/training.md).

Example:
    >>> model = Ensemble([HybridModel(88, 512, 6) for _ in range(3)])
    >>> model(**batch).exp().sum(1)  # probabilities: each row sums to 1
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Ensemble(nn.Module):
    """Members' mean class probability, as log-probabilities (B, n_classes)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, not {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, audio, audio_mask, audio_t, video, video_mask, video_t, **_):
        logp = torch.stack([F.log_softmax(m(audio=audio, audio_mask=audio_mask, audio_t=audio_t,
                                              video=video, video_mask=video_mask,
                                              video_t=video_t), -1) for m in self.members])
        return torch.logsumexp(logp, 0) - math.log(len(self.members))


def members(model: nn.Module) -> list[nn.Module]:
    """The models inside ``model``: an ensemble's members, or the model itself."""
    return list(model.members) if isinstance(model, Ensemble) else [model]
