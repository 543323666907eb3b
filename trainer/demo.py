"""The built-in demo data set: synthetic clips in the real clip format, built so that a model
that does not relate the two streams in time fails on it.

    python -m trainer demo-data --out demo-data
    python -m trainer demo-data --out demo-512 --audio-fps 100 --audio-dim 89 --video-fps 15 \
        --video-dim 512

What a clip holds, per stream (features look like real ones, not like white noise):
- the speaker: a per-speaker vector that is most of the video's variance (face embeddings
  such as FaceNet's are identity embeddings) and a per-speaker spectral envelope and gain in
  the audio; each speaker also renders the expression cues in a way of its own;
- background: noise correlated over about 50 ms (audio) and a slow drift (video: head pose);
- brief events of 0.1 to 0.3 s, several per clip: 2 or 3 *cue* events in each stream, whose
  kind carries the class, and 0 to 2 *filler* events (the same kind for every class) at
  random moments in each stream.

How each class is made: an audio cue kind (A0 or A1), a video cue kind (V0 or V1), and
whether the video cue events happen at the same moments as the audio cue events (each pair
within 40 ms: *synchronous*) or never near them (every onset at least 0.4 s from each audio
cue onset: *asynchronous*). Event times within each stream follow the same process in both
cases, so neither stream alone tells them apart.

    ANG  A0 + V0  synchronous        DIS  A0 + V0  asynchronous
    FEA  A1 + V1  synchronous        HAP  A1 + V1  asynchronous
    NEU  A0 + V1  either             SAD  A1 + V0  either

Audio alone narrows a clip to three classes, video alone to three; both streams without their
timing name NEU and SAD but leave ANG/DIS and FEA/HAP at chance, so a late fusion that pools
each stream over time before combining them is bounded by construction at about 4/6 = 0.67
macro-F1; only a model that relates the moments of the two streams can tell all six apart.

Clips vary in length (2 to 4 s), classes are imbalanced, half the speakers use CREMA-D names and
half RAVDESS names (with some calm and surprised clips, excluded), and a few files are broken in
the ways real data sets are.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data import LABELS
from trainer.store.files import atomic_write_bytes

CLASS_SHARE = [0.20, 0.15, 0.15, 0.20, 0.15, 0.15]  # ANG DIS FEA HAP NEU SAD: imbalanced
RAVDESS_CODE = {"NEU": "01", "HAP": "03", "SAD": "04", "ANG": "05", "FEA": "06", "DIS": "07"}
CREMA_SENTENCES = ["DFA", "IEO", "IOM", "ITH", "ITS", "IWL", "IWW", "MTI", "TAI", "TIE", "TSI",
                   "WSI"]
CREMA_LEVELS = ["XX", "LO", "MD", "HI"]
# (audio cue, video cue, timing) per class, in LABELS order; timing None: either, at random.
CLASSES = [(0, 0, "sync"), (0, 0, "async"), (1, 1, "sync"), (1, 1, "async"), (0, 1, None),
           (1, 0, None)]
SYNC_WITHIN = 0.04  # s: a synchronous pair's onsets differ by at most this
ASYNC_APART = 0.4  # s: an asynchronous video cue onset is at least this far from every audio one
EVENT_SECONDS = (0.1, 0.3)
MIN_GAP = 0.45  # s between two onsets in one stream (events never overlap)


@dataclass
class Shape:
    """Frame rates and feature widths of the demo's streams."""

    audio_fps: float = 50.0
    audio_dim: int = 40
    video_fps: float = 30.0
    video_dim: int = 64


def cues(label: int) -> tuple[int, int, str | None]:
    """(audio cue, video cue, timing) of a class; timing is sync, async or None (either)."""
    return CLASSES[label]


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _unit_rows(rng, n: int, dim: int) -> np.ndarray:
    p = rng.normal(size=(n, dim))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _ar_noise(rng, n: int, dim: int, fps: float, tau: float) -> np.ndarray:
    """Unit-variance noise correlated over ``tau`` seconds (an AR(1) process per feature)."""
    return ar1_noise(rng, n, dim, float(np.exp(-1.0 / (fps * tau))))


def ar1_noise(rng, n: int, dim: int, rho: float) -> np.ndarray:
    """AR(1) noise of unit variance per feature: x[i] = rho x[i-1] + sqrt(1 - rho^2) e[i]."""
    e = rng.normal(size=(n, dim)) * np.sqrt(1 - rho ** 2)
    x = np.empty((n, dim))
    x[0] = rng.normal(size=dim)
    for i in range(1, n):
        x[i] = rho * x[i - 1] + e[i]
    return x


def _onsets(rng, n: int, duration: float, avoid=(), apart: float = 0.0, tries: int = 200):
    """``n`` sorted onsets in [0.1, duration - 0.35], MIN_GAP apart and ``apart`` from ``avoid``."""
    for _ in range(tries):
        t = np.sort(rng.uniform(0.1, duration - 0.35, n))
        if n > 1 and np.diff(t).min() < MIN_GAP:
            continue
        if len(avoid) and np.abs(t[:, None] - np.asarray(avoid)[None, :]).min() < apart:
            continue
        return t
    return None


class _Speaker:
    """What makes one speaker: identity in both streams, and their own rendering of the cues."""

    def __init__(self, rng, shape: Shape, audio_cues, video_cues, filler, style: float):
        da, dv = shape.audio_dim, shape.video_dim
        # Audio: a smooth spectral envelope (log-mel-like) and a gain; video: an identity
        # vector three times the size of all expression and pose variation together.
        envelope = np.convolve(rng.normal(size=da + 8), np.ones(9) / 3, mode="valid")
        self.audio_base = envelope * 1.5 + rng.normal() * 2.0
        self.audio_gain = np.exp(rng.normal(0, 0.25))
        self.video_base = _unit_rows(rng, 1, dv)[0] * 3.0 * np.sqrt(dv)
        self.style = style
        self.audio_cues = self._own(rng, audio_cues)
        self.video_cues = self._own(rng, video_cues)
        self.filler = (self._own(rng, filler[0][None])[0], self._own(rng, filler[1][None])[0])

    def _own(self, rng, protos):  # each speaker renders a cue their own way (``style`` of it)
        mixed = protos + self.style * _unit_rows(rng, len(protos), protos.shape[1])
        return mixed / np.linalg.norm(mixed, axis=1, keepdims=True)


class _Maker:
    def __init__(self, seed: int, shape: Shape, strength: float = 1.6, style: float = 0.45):
        self.rng = np.random.default_rng(seed)
        self.shape, self.strength, self.style = shape, strength, style
        self.audio_cues = _unit_rows(self.rng, 2, shape.audio_dim)
        self.video_cues = _unit_rows(self.rng, 2, shape.video_dim)
        self.filler = (_unit_rows(self.rng, 1, shape.audio_dim)[0],
                       _unit_rows(self.rng, 1, shape.video_dim)[0])

    def speaker(self) -> _Speaker:
        return _Speaker(self.rng, self.shape, self.audio_cues, self.video_cues, self.filler,
                        self.style)

    def _events(self, label: int, duration: float):
        """Cue onsets and lengths per stream, and whether the clip came out synchronous."""
        rng = self.rng
        _, _, timing = CLASSES[label]
        sync = rng.random() < 0.5 if timing is None else timing == "sync"
        n = int(rng.integers(2, 4)) if duration > 3.0 else 2
        while True:
            a_on = _onsets(rng, n, duration)
            if a_on is None:
                continue
            if sync:
                v_on = a_on + rng.uniform(-SYNC_WITHIN, SYNC_WITHIN, n)
                v_on = np.clip(v_on, 0.05, None)
            else:
                v_on = _onsets(rng, n, duration, a_on, ASYNC_APART)
                if v_on is None:
                    continue
            a_len = rng.uniform(*EVENT_SECONDS, n)
            v_len = np.clip(a_len + rng.uniform(-0.03, 0.03, n), *EVENT_SECONDS) if sync else \
                rng.uniform(*EVENT_SECONDS, n)
            return a_on, a_len, v_on, v_len

    def clip(self, label: int, spk: _Speaker, float64: bool = False) -> dict:
        rng, sh = self.rng, self.shape
        duration = rng.uniform(2.0, 4.0)
        ta = (np.arange(int(duration * sh.audio_fps)) + 0.5) / sh.audio_fps
        tv = (np.arange(int(duration * sh.video_fps)) + 0.5) / sh.video_fps
        a_cue, v_cue, _ = CLASSES[label]
        a_on, a_len, v_on, v_len = self._events(label, duration)
        # Background: speaker + correlated noise (audio); speaker + slow drift + noise (video).
        audio = spk.audio_base + _ar_noise(rng, ta.size, sh.audio_dim, sh.audio_fps, 0.05)
        video = (spk.video_base + 0.6 * _ar_noise(rng, tv.size, sh.video_dim, sh.video_fps, 0.8)
                 + 0.8 * rng.normal(size=(tv.size, sh.video_dim)))
        # An event's size per feature against background noise of about 1 per feature.
        scale_a, scale_v = (self.strength * np.sqrt(d) for d in (sh.audio_dim, sh.video_dim))
        for on, ln in zip(a_on, a_len):
            audio += self._bump(ta, on, ln)[:, None] * spk.audio_cues[a_cue] * scale_a
        for on, ln in zip(v_on, v_len):
            video += self._bump(tv, on, ln)[:, None] * spk.video_cues[v_cue] * scale_v
        # Fillers: the same kind of event for every class, at random moments of each stream.
        for t, x, proto, scale in ((ta, audio, spk.filler[0], scale_a),
                                   (tv, video, spk.filler[1], scale_v)):
            for on in rng.uniform(0.05, duration - 0.35, int(rng.integers(0, 3))):
                x += self._bump(t, on, rng.uniform(*EVENT_SECONDS))[:, None] * proto * scale
        audio = audio * spk.audio_gain
        dtype = np.float64 if float64 else np.float32
        return {
            "audio_features": audio.astype(dtype), "video_features": video.astype(dtype),
            "audio_timestamps": ta.astype(np.float32), "video_timestamps": tv.astype(np.float32),
            "emotion_label": np.int64(label),
            "params": np.array(json.dumps({"source": "trainer.demo", "audio_fps": sh.audio_fps,
                                           "video_fps": sh.video_fps})),
        }

    def _bump(self, t, onset, length):
        """An event's envelope over frame times ``t``: a raised cosine, 0 outside the event."""
        x = (t - onset) / length
        inside = (x >= 0) & (x < 1)
        return np.where(inside, np.sin(np.pi * np.clip(x, 0, 1)) ** 0.5, 0.0) * \
            self.rng.uniform(0.7, 1.0)


def make_demo_data(out: str | Path, seed: int = 0, speakers: int = 36, clips_per_speaker: int = 24,
                   shape: Shape | None = None, strength: float = 1.6, style: float = 0.45) -> dict:
    """Write the demo data set into ``out``; returns counts of what was written.

    ``strength`` (an event's size against the background) and ``style`` (how much of a cue is
    each speaker's own) make harder variants, for measuring settings where the demo is easy.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    maker = _Maker(seed, shape or Shape(), strength, style)
    written, excluded = 0, 0
    for s in range(speakers):
        spk = maker.speaker()
        labels = maker.rng.choice(len(LABELS), size=clips_per_speaker, p=CLASS_SHARE)
        crema = s % 2 == 0  # half the speakers in each naming style
        used: dict[str, int] = {}
        for j, label in enumerate(labels):
            emo = LABELS[label]
            k = used.get(emo, 0)
            used[emo] = k + 1
            if crema:
                name = (f"{1001 + s}_{CREMA_SENTENCES[k % 12]}_{emo}_"
                        f"{CREMA_LEVELS[(k // 12) % 4]}.npz")
            else:
                actor = f"{s + 1:02d}"
                # intensity, statement, repetition: RAVDESS has 8 per emotion; a 9th clip of
                # one emotion takes repetition 03, rather than overwrite the first
                name = (f"Actor_{actor}/01-01-{RAVDESS_CODE[emo]}-{1 + k % 2:02d}-"
                        f"{1 + (k // 2) % 2:02d}-{1 + k // 4:02d}-{actor}.npz")
            atomic_write_bytes(out / name, _npz_bytes(**maker.clip(int(label), spk, j % 5 == 0)))
            written += 1
        if not crema and s < 6:
            # RAVDESS calm (02) and surprised (08): outside the label set, excluded and counted.
            for code in ("02", "08"):
                clip = maker.clip(4, spk)
                atomic_write_bytes(out / f"Actor_{s + 1:02d}/01-01-{code}-01-01-01-{s + 1:02d}.npz",
                                   _npz_bytes(**clip))
                excluded += 1
    broken = _write_broken(out, maker)
    return {"clips": written, "excluded": excluded, "broken": broken, "path": str(out)}


def _write_broken(out: Path, maker: _Maker) -> int:
    """A few files broken the way real data sets are; each must be skipped with a reason."""
    good = maker.clip(0, maker.speaker())
    nan_clip = dict(good, audio_features=good["audio_features"].copy())
    nan_clip["audio_features"][3, 2] = np.nan
    da = maker.shape.audio_dim
    cases = {
        "1091_DFA_ANG_XX.npz": b"this is not a zip file",  # unreadable
        "1092_DFA_HAP_XX.npz": _npz_bytes(audio_features=good["audio_features"]),  # no video
        "1093_DFA_SAD_XX.npz": _npz_bytes(**nan_clip),  # non-finite values
        "1094_DFA_NEU_XX.npz": _npz_bytes(**dict(good, video_features=np.ones((20, 7)))),  # width
        "1095_DFA_FEA_XX.npz": _npz_bytes(**dict(good, audio_features=np.zeros((0, da)))),
    }
    for name, data in cases.items():
        atomic_write_bytes(out / "broken" / name, data)
    return len(cases)
