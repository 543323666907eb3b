"""What a model that standardises by speaker (``--norm speaker``) does with a clip whose speaker
has no statistics (no enrolment, no other clip of theirs): the fallback, chosen by measurement.

    fb = fallback_state(pooled_train_clips)             # at train time, into the checkpoint
    summary["lone_clip"] = choose(fb, model, normalizer, {"val": ..., "test": ...}, labels)
    stats = fallback_stats(ckpt["fallback"], pooled_clip)          # at predict time

The candidates, each from the clip (pooled) and the training split's pooled running sums:
- ``clip``: the clip's own statistics (``--norm clip`` for that clip alone);
- ``blend``: the clip's own sums plus ``PRIOR_CLIPS`` typical training clips' worth of frames
  with the pooled statistics, as maximum a posteriori speaker adaptation does with a relevance
  factor (Reynolds et al. 2000): a short clip leans on the training speakers, a long one on
  itself;
- ``pooled``: the statistics of every training frame (all training speakers together).

No one of them is best on every kind of data (docs/training.md, A lone clip): the clip's own
statistics lose whatever a whole clip's level says (a louder, higher clip), the pooled ones
keep each speaker's own offset. So each run chooses: at its end, every candidate is measured
on the validation speakers, each clip alone, and the best macro-F1 (ties: the order above)
becomes the checkpoint's fallback; the figures, with the one of speaker statistics and the
same on the test speakers, go into the checkpoint and ``summary.json``. A checkpoint from
before the end (a stopped run's) falls back on ``DEFAULT``.
"""

from __future__ import annotations

import numpy as np
import torch

from trainer.batching import FeatureSums, Normalizer
from trainer.data import Clip
from trainer.evaluate import predict_proba
from trainer.metrics import classification_report
from trainer.prepare import SpeakerSums, clip_stats, standardise, standardise_clip

CANDIDATES = ("clip", "blend", "pooled")
DEFAULT = "clip"  # until the run's end has measured: what predict did before it measured
PRIOR_CLIPS = 1.0  # blend: the pooled statistics weigh as much as this many typical clips
DESCRIBE = {
    "pooled": "the training speakers' pooled statistics",
    "clip": "the clip's own statistics",
    "blend": "the clip's own statistics blended with the training speakers'",
}


def _sums_state(acc: FeatureSums) -> dict:
    return {"n": int(acc.n), "sum": torch.from_numpy(np.asarray(acc.s, dtype=np.float64)),
            "sumsq": torch.from_numpy(np.asarray(acc.ss, dtype=np.float64))}


def _sums(d: dict) -> FeatureSums:
    return FeatureSums(int(d["n"]), np.asarray(d["sum"], dtype=np.float64),
                       np.asarray(d["sumsq"], dtype=np.float64))


def fallback_state(train_clips: list[Clip]) -> dict:
    """What the fallback needs, from the training split's pooled (not standardised) clips: their
    running sums and the median frames per clip of each stream. Stored in the checkpoint."""
    acc = SpeakerSums()
    for c in train_clips:
        acc.add(c)
    return {"method": DEFAULT, "prior_clips": PRIOR_CLIPS,
            "pooled": {"clips": acc.clips, "audio": _sums_state(acc.audio),
                       "video": _sums_state(acc.video)},
            "frames_per_clip": {"audio": float(np.median([c.audio.shape[0] for c in train_clips])),
                                "video": float(np.median([c.video.shape[0] for c in train_clips]))}}


def _blend(own: FeatureSums, pooled: FeatureSums, frames: float) -> FeatureSums:
    """``own`` plus ``frames`` frames with the mean and second moment of ``pooled``."""
    w = frames / pooled.n
    return FeatureSums(own.n + frames, own.s + w * pooled.s, own.ss + w * pooled.ss)


def candidate_stats(fb: dict, method: str, c: Clip) -> tuple[np.ndarray, ...]:
    """Statistics for pooled clip ``c`` by one candidate (``CANDIDATES``)."""
    if method == "clip":
        return clip_stats(c)
    pa, pv = _sums(fb["pooled"]["audio"]), _sums(fb["pooled"]["video"])
    if method == "pooled":
        return SpeakerSums(pa, pv).stats()
    if method != "blend":
        raise ValueError(f"fallback must be one of {', '.join(CANDIDATES)}, not {method!r}")
    own = SpeakerSums()
    own.add(c)
    k = fb["prior_clips"]
    return SpeakerSums(_blend(own.audio, pa, k * fb["frames_per_clip"]["audio"]),
                       _blend(own.video, pv, k * fb["frames_per_clip"]["video"])).stats()


def describe(fb: dict | None) -> str:
    """The checkpoint's fallback in words, e.g. ``blend (the clip's own statistics blended with
    the training speakers')``."""
    if not fb:
        return "clip (the clip's own statistics; this checkpoint records no training statistics)"
    return f"{fb['method']} ({DESCRIBE[fb['method']]})"


def fallback_stats(fb: dict | None, c: Clip) -> tuple[np.ndarray, ...]:
    """The checkpoint's fallback statistics for pooled clip ``c``. A checkpoint without a
    fallback (written before it existed) has only the clip's own."""
    return candidate_stats(fb, fb["method"], c) if fb else clip_stats(c)


def _macro_f1(model, normalizer: Normalizer, clips: list[Clip], labels: list[str],
              batch_size: int, modality: str) -> float:
    probs = predict_proba(model, [normalizer(c) for c in clips], batch_size, modality)
    return classification_report([c.label for c in clips], probs.argmax(1), labels)["macro_f1"]


def measure(model, normalizer: Normalizer, clips: list[Clip], fb: dict, labels: list[str],
            batch_size: int = 32, modality: str = "both") -> dict:
    """Macro-F1 on pooled ``clips`` standardised with their speakers' statistics (``speaker``,
    from the clips themselves) and with each candidate, each clip alone."""
    out = {"speaker": _macro_f1(model, normalizer, standardise(clips, "speaker"), labels,
                                batch_size, modality)}
    for method in CANDIDATES:
        alone = [standardise_clip(c, candidate_stats(fb, method, c)) for c in clips]
        out[method] = _macro_f1(model, normalizer, alone, labels, batch_size, modality)
    return {k: round(v, 6) for k, v in out.items()}


def choose(fb: dict, model, normalizer: Normalizer, clips: dict[str, list[Clip]],
           labels: list[str], batch_size: int = 32, modality: str = "both") -> dict:
    """Measure every candidate on ``clips["val"]`` and ``clips["test"]`` (pooled), make the
    best on validation ``fb``'s method, and record the figures in ``fb`` (``fallback``: the
    chosen one's). Returns the summary's ``lone_clip``."""
    f1 = {k: measure(model, normalizer, v, fb, labels, batch_size, modality)
          for k, v in clips.items()}
    method = max(CANDIDATES, key=lambda m: (f1["val"][m], -CANDIDATES.index(m)))
    for figures in f1.values():
        figures["fallback"] = figures[method]
    fb.update(method=method, validation_macro_f1=f1["val"], test_macro_f1=f1["test"])
    return {"fallback": method, "chosen_by": "validation macro-F1, each clip alone",
            "validation": f1["val"], "test": f1["test"]}
