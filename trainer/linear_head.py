"""The hybrid's linear head (``--linear-head``, on by default): the pooled linear baseline inside
the model, fitted after training, mixed into its output at a weight chosen on validation.

Each clip's input features (as the model reads them: pooled, standardised per speaker, scaled
by the training split) are summarised over its real frames by their mean, deviation and
maximum per dimension, scaled by those summaries' training statistics, and read by a
multinomial logistic regression: what the robustness suite's floor (``trainer.bench.linear``)
reads. Nothing here is learned by gradient. After training (``trainer.train_linear``), the
regression is fitted on the training clips by full-batch L-BFGS, class-balanced, its L2
penalty chosen on the validation macro-F1; then the weight ``mix`` of its log-probabilities
against the rest of the model's is the one of 0, 0.1, ... 1 with the lowest validation
log-loss. The model's output in evaluation is then::

    (1 - mix) * log_softmax(rest) + mix * log_softmax(linear)

a product of the two experts' probabilities, renormalised by softmax: where the deep model is
unsure (small data: the raw media's 156 training clips, a faint cue), a sure linear model
decides; where the linear model cannot see the cue (timing pairs), validation gives it 0.

Why the log-loss, not macro-F1, for ``mix``: on 3 validation speakers, macro-F1 moves in
steps of a clip and tied or reversed the weights' order on most seeds; the log-loss reads how
sure each clip's answer was, and on the raw media chose 0.3 to 0.9 where the test figures
agreed (docs/training.md). While training, the head is off (``mix`` 0, and the model
in training mode does not read it), so training is unchanged.

    head = LinearHead(audio_dim=40, video_dim=64, k=6)  # in the hybrid (trainer.model)
    fit_linear_head(model, {"train": train_clips, "val": val_clips}, cfg)  # after training
    logits = head(audio, audio_mask, video, video_mask)  # (B, 6)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.pooling import masked_max, mean_std


def summaries(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean, deviation and maximum over real frames: (B, T, C) -> (B, 3C). No gradient flows
    here, so the deviation needs no ``eps``: it is the floor's (``trainer.bench.linear``)."""
    mean, std = mean_std(x, mask, eps=0.0)
    return torch.cat([mean, std, masked_max(x, mask)], -1)


class LinearHead(nn.Module):
    """A multinomial logistic regression on each stream's per-clip summaries; all buffers."""

    def __init__(self, audio_dim: int, video_dim: int, k: int):
        super().__init__()
        n = 3 * (audio_dim + video_dim)
        self.register_buffer("mu", torch.zeros(n))  # the summaries' training mean
        self.register_buffer("sd", torch.ones(n))  # and deviation
        self.register_buffer("weight", torch.zeros(k, n))
        self.register_buffer("bias", torch.zeros(k))
        self.register_buffer("mix", torch.zeros(()))  # its weight in the model's output

    def features(self, audio, audio_mask, video, video_mask) -> torch.Tensor:
        return torch.cat([summaries(audio, audio_mask), summaries(video, video_mask)], -1)

    def forward(self, audio, audio_mask, video, video_mask) -> torch.Tensor:
        """Logits (B, k)."""
        z = (self.features(audio, audio_mask, video, video_mask) - self.mu) / self.sd
        return z @ self.weight.T + self.bias

    def combine(self, rest: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
        return (1 - self.mix) * F.log_softmax(rest, -1) + self.mix * F.log_softmax(linear, -1)

    def mixed(self, rest: torch.Tensor, audio, audio_mask, video, video_mask) -> torch.Tensor:
        """The model's output in evaluation: ``combine`` of ``rest`` (the rest of the model's
        logits) and this head's. At weight 0 the regression is not run (nor exported): the
        output is then ``log_softmax(rest)``, what ``combine`` gives."""
        if not bool(self.mix):
            return F.log_softmax(rest, -1)
        return self.combine(rest, self(audio, audio_mask, video, video_mask))
