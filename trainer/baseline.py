"""The BiLSTM-with-attention baseline that the hybrid model replaces; kept to measure against.

    audio ─ BiLSTM 128 ─ BiLSTM 64 ─ attention pool ─┐
                                                    ├─ dense 256 ─ dense 128 ─ classifier
    video ─ BiLSTM 256 ─ BiLSTM 128 ─ attention pool ┘   (batch norm, dropout)

Sequences are packed, so the LSTMs never read padding; pooling is masked.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class BiLSTMStack(nn.Module):
    def __init__(self, in_dim: int, hidden: tuple[int, int], dropout: float):
        super().__init__()
        self.lstm1 = nn.LSTM(in_dim, hidden[0], batch_first=True, bidirectional=True)
        self.lstm2 = nn.LSTM(2 * hidden[0], hidden[1], batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)

    def run(self, lstm, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out  # (B, T, 2H), zeros on padding

    def forward(self, x, mask):
        lengths = mask.sum(1).cpu()
        h = self.drop(self.run(self.lstm1, x, lengths))
        return self.run(self.lstm2, h, lengths)  # (B, T, 2 * hidden[1])


class AttentionPool(nn.Module):
    """Softmax-weighted sum over real frames: (B, T, C) -> (B, C)."""

    def __init__(self, d: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(d, d // 2), nn.Tanh(), nn.Linear(d // 2, 1))

    def forward(self, x, mask):
        s = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, T)
        return (torch.softmax(s, dim=1).unsqueeze(-1) * x).sum(1)


class LSTMBaseline(nn.Module):
    def __init__(self, audio_dim: int, video_dim: int, n_classes: int, dropout: float = 0.3):
        super().__init__()
        self.audio = BiLSTMStack(audio_dim, (128, 64), dropout)
        self.video = BiLSTMStack(video_dim, (256, 128), dropout)
        self.audio_pool, self.video_pool = AttentionPool(128), AttentionPool(256)
        self.fusion = nn.Sequential(
            nn.Linear(128 + 256, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(128, n_classes))

    def forward(self, audio, audio_mask, video, video_mask, **_):
        a = self.audio_pool(self.audio(audio, audio_mask), audio_mask)  # (B, 128)
        v = self.video_pool(self.video(video, video_mask), video_mask)  # (B, 256)
        return self.fusion(torch.cat([a, v], -1))  # (B, n_classes)
