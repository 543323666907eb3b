"""Synchrony features: how the two streams' class cues move together over a clip.

Where two classes differ only in whether brief events in the audio and the video happen at the
same moments, the statistic that tells them apart is a correlation over time of what each
stream does. The hybrid's cross-modal attention can learn it, but on a few hundred clips with a
faint cue it memorised its training clips instead (the robustness suite's ``small-cue``: timing
pairs at chance). So the hybrid's synchrony head (``--sync-head``) computes that statistic
along directions that are not learned by gradient:

- ``fit`` sets them once, before training: for each class and stream, the class's mean over
  the training clips of the clip-mean features, centred (the direction a stream's frames move
  in when that class's cue is present; what the pooled linear baseline reads);
- each clip's frames are read along the K class directions of each stream, the video's at the
  audio frames' times (the nearest real frame), each trace standardised over the clip's real
  frames, and every audio trace correlated with every video trace: K x K numbers per clip, then
  standardised by their means and deviations over the training clips (``set_scale``).

Nothing here is fitted to single clips, so nothing here can memorise them; the head's own
linear map (in ``trainer.model``) has K x K x K weights. Its weight in the logits is chosen on
the validation speakers after training (``trainer.train_sync``).

    sync = SyncFeatures(audio_dim=40, video_dim=64, k=6)
    sync.fit(audio_means, video_means, labels)        # (N, 40), (N, 64), (N,)
    sync.set_scale(features_of_the_training_clips)    # (N, 36)
    f = sync(audio, audio_mask, audio_t, video, video_mask, video_t)  # (B, 36)
"""

from __future__ import annotations

import torch
import torch.nn as nn


class SyncFeatures(nn.Module):
    """K x K correlations over time between the streams' traces along fixed class directions."""

    def __init__(self, audio_dim: int, video_dim: int, k: int):
        super().__init__()
        self.register_buffer("wa", torch.zeros(k, audio_dim))  # audio directions, unit norm
        self.register_buffer("wv", torch.zeros(k, video_dim))  # video directions
        self.register_buffer("mu", torch.zeros(k * k))  # each correlation's training mean
        self.register_buffer("sd", torch.ones(k * k))  # and deviation

    @torch.no_grad()
    def fit(self, audio_means: torch.Tensor, video_means: torch.Tensor,
            labels: torch.Tensor) -> None:
        """The directions from the training clips' mean features (N, D) and labels (N,)."""
        y = nn.functional.one_hot(labels, self.wa.shape[0]).to(audio_means.dtype)
        y = y - y.mean(0)
        for w, x in ((self.wa, audio_means), (self.wv, video_means)):
            d = y.T @ (x - x.mean(0))  # (K, D): each class's centred mean, times its count
            w.copy_(d / d.norm(dim=1, keepdim=True).clamp(min=1e-8))
        self.mu.zero_()
        self.sd.fill_(1.0)

    @torch.no_grad()
    def set_scale(self, features: torch.Tensor) -> None:
        """Standardise by the features (N, K * K) of the training clips, from ``forward``
        after ``fit`` (which leaves them unscaled)."""
        self.mu.copy_(features.mean(0))
        self.sd.copy_(features.std(0).clamp(min=1e-6))

    def forward(self, audio, audio_mask, audio_t, video, video_mask, video_t):
        pa, pv = audio @ self.wa.T, video @ self.wv.T  # (B, T_a, K), (B, T_v, K)
        gap = (audio_t[:, :, None] - video_t[:, None, :]).abs()  # (B, T_a, T_v) seconds
        gap = gap.masked_fill(~video_mask[:, None, :], float("inf"))
        near = gap.argmin(-1)  # (B, T_a): the nearest real video frame
        pv = pv.gather(1, near[..., None].expand(-1, -1, pv.shape[-1]))  # (B, T_a, K)
        m = audio_mask[..., None].to(pa.dtype)  # (B, T_a, 1)
        n = m.sum(1, keepdim=True).clamp(min=1)  # (B, 1, 1)

        def z(x):  # standardised over the clip's real frames, padding 0: (B, T_a, K)
            x = (x - (x * m).sum(1, keepdim=True) / n) * m
            return x / ((x * x).sum(1, keepdim=True) / n + 1e-5).sqrt()

        c = (torch.einsum("bti,btj->bij", z(pa), z(pv)) / n).flatten(1)  # (B, K * K)
        return (c - self.mu) / self.sd
