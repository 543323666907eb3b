"""The built-in demo data set: synthetic clips in the real clip format, made in a second.

Each of the six classes is a pair (audio cue, video cue): three audio cues times two video cues.
Audio alone tells only which pair of classes a clip is in, video alone which triple, so only a
model that combines both can name the emotion. Both cues happen at the same moment of the clip
(an "event" of 0.4 to 0.8 s), buried in noise and a per-speaker offset that a model must learn
to ignore. Clips vary in length (1.5 to 4 s), classes are imbalanced, half the speakers use
CREMA-D names and half RAVDESS names (with some calm and surprised clips, excluded), and a few
files are broken in the ways real data sets are.

Example:
    python -m trainer demo-data --out demo-data
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainer.data import LABELS
from trainer.storage import atomic_write_bytes

AUDIO_DIM, VIDEO_DIM = 32, 48
AUDIO_FPS, VIDEO_FPS = 50.0, 15.0
CLASS_SHARE = [0.22, 0.12, 0.12, 0.22, 0.20, 0.12]  # ANG DIS FEA HAP NEU SAD: imbalanced
RAVDESS_CODE = {"NEU": "01", "HAP": "03", "SAD": "04", "ANG": "05", "FEA": "06", "DIS": "07"}
CREMA_SENTENCES = ["DFA", "IEO", "IOM", "ITH", "ITS", "IWL", "IWW", "MTI", "TAI", "TIE", "TSI",
                   "WSI"]
CREMA_LEVELS = ["XX", "LO", "MD", "HI"]


def cues(label: int) -> tuple[int, int]:
    """(audio cue, video cue) of a class: ANG (0,0) DIS (1,0) FEA (2,0) HAP (0,1) NEU (1,1) SAD (2,1)."""
    return label % 3, label // 3


def _npz_bytes(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


class _Maker:
    def __init__(self, seed: int, noise: float):
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        # Unit-norm prototypes per cue; the audio cue is a spectral-like pattern, the video one a
        # "facial" pattern.
        self.audio_proto = self._protos(3, AUDIO_DIM)
        self.video_proto = self._protos(2, VIDEO_DIM)

    def _protos(self, n, dim):
        p = self.rng.normal(size=(n, dim))
        return p / np.linalg.norm(p, axis=1, keepdims=True) * np.sqrt(dim)

    def speaker_offsets(self):
        return (self.rng.normal(size=AUDIO_DIM) * 0.8, self.rng.normal(size=VIDEO_DIM) * 0.8)

    def clip(self, label: int, offsets, float64: bool = False) -> dict:
        rng = self.rng
        duration = rng.uniform(1.5, 4.0)
        ta = np.arange(int(duration * AUDIO_FPS)) / AUDIO_FPS + 0.5 / AUDIO_FPS
        tv = np.arange(int(duration * VIDEO_FPS)) / VIDEO_FPS + 0.5 / VIDEO_FPS
        start = rng.uniform(0.1, duration - 0.9)
        length = rng.uniform(0.4, 0.8)
        a_cue, v_cue = cues(label)
        audio = rng.normal(size=(ta.size, AUDIO_DIM)) * self.noise + offsets[0]
        video = rng.normal(size=(tv.size, VIDEO_DIM)) * self.noise + offsets[1]
        a_on = (ta >= start) & (ta < start + length)
        v_on = (tv >= start) & (tv < start + length)
        audio[a_on] += self.audio_proto[a_cue] * rng.uniform(0.6, 1.0)
        video[v_on] += self.video_proto[v_cue] * rng.uniform(0.6, 1.0)
        dtype = np.float64 if float64 else np.float32
        return {
            "audio_features": audio.astype(dtype), "video_features": video.astype(dtype),
            "audio_timestamps": ta.astype(np.float32), "video_timestamps": tv.astype(np.float32),
            "emotion_label": np.int64(label),
            "params": np.array(json.dumps({"source": "trainer.demo", "audio_fps": AUDIO_FPS,
                                           "video_fps": VIDEO_FPS})),
        }


def make_demo_data(out: str | Path, seed: int = 0, speakers: int = 24, clips_per_speaker: int = 24,
                   noise: float = 0.7) -> dict:
    """Write the demo data set into ``out``; returns counts of what was written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    maker = _Maker(seed, noise)
    written, broken, excluded = 0, 0, 0
    for s in range(speakers):
        offsets = maker.speaker_offsets()
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
                name = (f"Actor_{actor}/01-01-{RAVDESS_CODE[emo]}-{1 + k % 2:02d}-"
                        f"{1 + (k // 2) % 2:02d}-{1 + (k // 4) % 2:02d}-{actor}.npz")
            atomic_write_bytes(out / name, _npz_bytes(**maker.clip(int(label), offsets, j % 5 == 0)))
            written += 1
        if not crema and s < 6:
            # RAVDESS calm (02) and surprised (08): outside the label set, excluded and counted.
            for code in ("02", "08"):
                clip = maker.clip(4, offsets)
                atomic_write_bytes(out / f"Actor_{s + 1:02d}/01-01-{code}-01-01-01-{s + 1:02d}.npz",
                                   _npz_bytes(**clip))
                excluded += 1
    broken = _write_broken(out, maker)
    return {"clips": written, "excluded": excluded, "broken": broken, "path": str(out)}


def _write_broken(out: Path, maker: _Maker) -> int:
    """A few files broken the way real data sets are; each must be skipped with a reason."""
    offsets = (np.zeros(AUDIO_DIM), np.zeros(VIDEO_DIM))
    good = maker.clip(0, offsets)
    nan_clip = dict(good, audio_features=good["audio_features"].copy())
    nan_clip["audio_features"][3, 2] = np.nan
    cases = {
        "1091_DFA_ANG_XX.npz": b"this is not a zip file",  # unreadable
        "1092_DFA_HAP_XX.npz": _npz_bytes(audio_features=good["audio_features"]),  # no video
        "1093_DFA_SAD_XX.npz": _npz_bytes(**nan_clip),  # non-finite values
        "1094_DFA_NEU_XX.npz": _npz_bytes(**dict(good, video_features=np.ones((20, 7)))),  # width
        "1095_DFA_FEA_XX.npz": _npz_bytes(**dict(good, audio_features=np.zeros((0, AUDIO_DIM)))),
    }
    for name, data in cases.items():
        atomic_write_bytes(out / "broken" / name, data)
    return len(cases)
