"""Synchrony features: how the two streams' class cues move together over a clip.

Where two classes differ only in whether brief events in the audio and the video happen at the
same moments, the statistic that tells them apart is a correlation over time of what each
stream does. The hybrid's cross-modal attention can learn it, but on a few hundred clips with a
faint cue it memorised its training clips instead (the robustness suite's ``small-cue``: timing
pairs at chance). So the hybrid's synchrony head (``--sync-head``) computes that statistic
along directions that are not learned by gradient:

- ``fit`` sets them once, before training. For each class and stream: the class's mean over
  the training clips of the clip-mean features, centred (the direction a stream's frames move
  in when that class's cue is present; what the pooled linear baseline reads), keeping only
  the dimensions where it stands ``THRESHOLD`` standard errors from 0 (with the cue in a tenth
  of 512 dimensions, the rest is noise that drowns it). Then ``pcs`` more per stream: the top
  principal directions of the frames' variation within clips. Centred class means see only
  what tells classes apart: where two classes share a cue's dimensions but differ in timing,
  their shared part cancels, and it is the part that shows *when* events happen. Brief events
  are what varies most within a clip where the background is a few frames' noise (the suite's
  ``small-cue``, seed 0, as a linear probe on held-out clips: timing pairs 0.85 with class
  directions, 0.92 with 3 principal directions added);
- each clip's frames are read along these directions in each stream, the video's at the
  audio frames' times (the nearest real frame), each trace standardised over the clip's real
  frames, and every audio class trace correlated with every video class trace (K x K numbers
  per clip) and every audio principal trace with every video one (pcs x pcs), then
  standardised by their means and deviations over the training clips (``set_scale``). Class
  traces are not crossed with principal ones: on the faint raw media (156 training clips) the
  full (K + pcs)^2 gave the head more inputs than it could weigh (0.766 over 3 seeds against
  0.841 with the class directions alone, and 0.827 as here).

Nothing here is fitted to single clips, so nothing here can memorise them; the head's own
linear map (in ``trainer.model``) has (K^2 + pcs^2) x K weights. Its weight in the logits is
chosen on the validation speakers after training (``trainer.train_sync``).

    sync = SyncFeatures(audio_dim=40, video_dim=64, k=6, pcs=3)
    sync.fit(audio_means, video_means, labels,        # (N, 40), (N, 64), (N,)
             audio_cov, video_cov)                    # (40, 40), (64, 64): within clips
    sync.set_scale(features_of_the_training_clips)    # (N, 45)
    f = sync(audio, audio_mask, audio_t, video, video_mask, video_t)  # (B, 45)
"""

from __future__ import annotations

import torch
import torch.nn as nn


THRESHOLD = 3.0  # standard errors from 0 a class direction's dimension needs to be kept


class SyncFeatures(nn.Module):
    """K^2 + pcs^2 correlations over time between the streams' traces along fixed directions:
    K classes' and ``pcs`` principal ones per stream, class with class and principal with
    principal."""

    def __init__(self, audio_dim: int, video_dim: int, k: int, pcs: int = 0):
        super().__init__()
        self.k, self.pcs, n = k, pcs, k + pcs
        self.register_buffer("wa", torch.zeros(n, audio_dim))  # audio directions, unit norm
        self.register_buffer("wv", torch.zeros(n, video_dim))  # video directions
        self.register_buffer("mu", torch.zeros(k * k + pcs * pcs))  # each one's training mean
        self.register_buffer("sd", torch.ones(k * k + pcs * pcs))  # and deviation

    @torch.no_grad()
    def fit(self, audio_means: torch.Tensor, video_means: torch.Tensor, labels: torch.Tensor,
            audio_cov: torch.Tensor | None = None, video_cov: torch.Tensor | None = None) -> None:
        """The directions from the training clips' mean features (N, D), labels (N,) and, with
        ``pcs``, the frames' covariance within clips (D, D)."""
        y = nn.functional.one_hot(labels, self.k).to(audio_means.dtype)
        y = y - y.mean(0)
        for w, x, cov in ((self.wa, audio_means, audio_cov), (self.wv, video_means, video_cov)):
            x = x - x.mean(0)
            d = y.T @ x  # (K, D): each class's centred mean, times its count
            # d's standard error per dimension if classes did not differ: sd(x) |y_k|
            t = d / (x.std(0)[None] * y.norm(dim=0)[:, None]).clamp(min=1e-12)
            kept = d * (t.abs() > THRESHOLD)
            d = torch.where((kept != 0).any(1, keepdim=True), kept, d)  # none kept: all
            w[:self.k] = d / d.norm(dim=1, keepdim=True).clamp(min=1e-8)
            if self.pcs:  # a stream narrower than pcs leaves the rest 0 (their features 0)
                _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
                top = vecs[:, -self.pcs:].flip(1).T  # (min(pcs, D), D), largest first
                big = top.abs().argmax(1, keepdim=True)  # one sign: its largest entry positive
                w[self.k:].zero_()
                w[self.k:self.k + len(top)] = top * top.gather(1, big).sign()
        self.mu.zero_()
        self.sd.fill_(1.0)

    @torch.no_grad()
    def set_scale(self, features: torch.Tensor) -> None:
        """Standardise by the features (N, K^2 + pcs^2) of the training clips, from ``forward``
        after ``fit`` (which leaves them unscaled)."""
        self.mu.copy_(features.mean(0))
        self.sd.copy_(features.std(0).clamp(min=1e-6))

    def forward(self, audio, audio_mask, audio_t, video, video_mask, video_t):
        pa, pv = audio @ self.wa.T, video @ self.wv.T  # (B, T_a, K'), (B, T_v, K'): K + pcs
        gap = (audio_t[:, :, None] - video_t[:, None, :]).abs()  # (B, T_a, T_v) seconds
        gap = gap.masked_fill(~video_mask[:, None, :], float("inf"))
        near = gap.argmin(-1)  # (B, T_a): the nearest real video frame
        pv = pv.gather(1, near[..., None].expand(-1, -1, pv.shape[-1]))  # (B, T_a, K')
        m = audio_mask[..., None].to(pa.dtype)  # (B, T_a, 1)
        n = m.sum(1, keepdim=True).clamp(min=1)  # (B, 1, 1)

        def z(x):  # standardised over the clip's real frames, padding 0: (B, T_a, K')
            x = (x - (x * m).sum(1, keepdim=True) / n) * m
            return x / ((x * x).sum(1, keepdim=True) / n + 1e-5).sqrt()

        c = torch.einsum("bti,btj->bij", z(pa), z(pv)) / n  # (B, K', K')
        k = self.k  # class with class, principal with principal: (B, K^2 + pcs^2)
        c = torch.cat([c[:, :k, :k].flatten(1), c[:, k:, k:].flatten(1)], 1)
        return (c - self.mu) / self.sd
