"""Enrolment: a speaker's statistics from unlabelled clips of theirs, for a model that
standardises by speaker (``--norm speaker``), as a speaker-adaptive system enrols a new speaker.

    python -m trainer enroll --checkpoint runs/demo/checkpoints/best.pt --out speakers.npz new/
    python -m trainer enroll --checkpoint best.pt --out alice.npz --speaker alice a.mp4 b.mp4
    python -m trainer predict --checkpoint best.pt --enroll speakers.npz clip.npz

Each clip is read, pooled to the checkpoint's rates and added to its speaker's running sums
(frames, and per feature the sum and the sum of squares, in float64), then dropped; a folder's
files are taken as the file system lists them, never gathered in a list: enrolling thousands
of clips holds one clip and the sums (``python -m trainer.bench.enroll_memory``). The
statistics are the ones ``evaluate`` takes from the same clips (``prepare``'s
``speaker_stats``: the same sums, added in another order at most, which changes the last bits
of a float64). The speaker is the one the file names tell, or ``--speaker`` for all.

An enrolment file (``.npz``) holds per speaker the clip count and the sums of each stream, and
``fit``: JSON naming the checkpoint it was made with, its ``prepare`` settings, the feature
widths, and ``key``, a hash of those settings, the widths, the extraction settings and the
checkpoint's normalisation: a file is used only with a checkpoint of the same key.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from trainer.batching import FeatureSums
from trainer.checkpoint import Trained, load_trained
from trainer.errors import DataError
from trainer.inputs import InputReader, iter_input_files, speaker_of
from trainer.prepare import SpeakerSums, pool_clip
from trainer.store.files import atomic_write_bytes

FORMAT = "trainer.enroll/1"
# numpy parses each array's header with ast.literal_eval, whose closures leave reference cycles
# (about 300 bytes a clip) that only a full collection frees, and with torch loaded Python runs
# one rarely: collected every this many clips (about 85 ms each), memory stays flat.
COLLECT_EVERY = 250


def fit_of(t: Trained) -> dict:
    """What an enrolment file must match to be used with checkpoint ``t``."""
    s = t.checkpoint["model_settings"]
    n = t.normalizer
    scaling = hashlib.sha256(b"".join(np.ascontiguousarray(getattr(n, k), dtype=np.float32)
                                      .tobytes() for k in ("audio_mean", "audio_std",
                                                           "video_mean", "video_std")))
    extract = (t.checkpoint.get("extract") or {}).get("settings")
    fit = {"prepare": {k: t.prepare.get(k) for k in ("audio_rate", "video_rate", "norm")},
           "audio_dim": int(s["audio_dim"]), "video_dim": int(s["video_dim"])}
    key = json.dumps({**fit, "extract": extract, "normalizer": scaling.hexdigest()},
                     sort_keys=True)
    return {**fit, "key": hashlib.sha256(key.encode()).hexdigest()[:16]}


def enrol(t: Trained, inputs: list[str], speaker: str | None = None,
          skipped: list[dict] | None = None) -> dict[str, SpeakerSums]:
    """Running sums per speaker of the (pooled) clips in ``inputs``, one clip at a time.

    Args:
        t: the checkpoint (its rates pool, its feature widths check each clip).
        inputs: clip files, raw media clips, folders of either.
        speaker: the speaker of every input; default: from each file name.
        skipped: a list that receives ``{"path", "reason"}`` for each input not used.
    """
    sums: dict[str, SpeakerSums] = defaultdict(SpeakerSums)
    skipped = skipped if skipped is not None else []
    reader = InputReader(t)
    for i, f in enumerate(iter_input_files(inputs), 1):
        if i % COLLECT_EVERY == 0:
            gc.collect()
        who = speaker_of(f, speaker)
        if not f.exists():
            skipped.append({"path": str(f), "reason": "file not found"})
            continue
        if who is None:
            skipped.append({"path": str(f), "reason": "its name tells no speaker (neither "
                            "CREMA-D nor RAVDESS, or a RAVDESS emotion outside the label set): "
                            "give --speaker NAME"})
            continue
        got = reader.read(f, who)
        if isinstance(got, str):
            skipped.append({"path": str(f), "reason": got})
            continue
        sums[who].add(pool_clip(got, t.prepare))
    return dict(sums)


def save_enrolment(path: str | Path, sums: dict[str, SpeakerSums], fit: dict) -> None:
    """Write an enrolment file, whole or not at all."""
    names = sorted(sums)
    arrays = {"format": np.array(FORMAT), "fit": np.array(json.dumps(fit)),
              "speakers": np.array(names, dtype=str),
              "clips": np.array([sums[s].clips for s in names], dtype=np.int64)}
    for stream, width in (("audio", fit["audio_dim"]), ("video", fit["video_dim"])):
        acc = [getattr(sums[s], stream) for s in names]
        arrays[f"{stream}_n"] = np.array([a.n for a in acc], dtype=np.int64)
        for key, attr in (("sum", "s"), ("sumsq", "ss")):
            arrays[f"{stream}_{key}"] = np.array(
                [np.asarray(getattr(a, attr), dtype=np.float64) for a in acc],
                dtype=np.float64).reshape(len(names), width)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())


def is_enrolment(path: Path) -> bool:
    """Whether ``path`` is an enrolment file (not a clip file)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "format" in z.files and str(z["format"]) == FORMAT
    except Exception:  # not a zip, a folder, missing: not an enrolment file
        return False


def load_enrolment(path: str | Path, t: Trained) -> dict[str, SpeakerSums]:
    """The speakers' sums in enrolment file ``path``, checked against checkpoint ``t``.

    Raises:
        DataError: not an enrolment file, or made for another checkpoint or other widths.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(f"enrolment file {path} cannot be read: {type(e).__name__}") from None
    if str(arrays.get("format", "")) != FORMAT:
        raise DataError(f"{path} is not an enrolment file (make one with `trainer enroll`)")
    fit, want = json.loads(str(arrays["fit"])), fit_of(t)
    if fit.get("key") != want["key"]:
        widths = (fit.get("audio_dim"), fit.get("video_dim"))
        why = (f"feature widths {widths[0]}, {widths[1]}; the model takes "
               f"{want['audio_dim']}, {want['video_dim']}"
               if widths != (want["audio_dim"], want["video_dim"]) else
               f"another checkpoint ({fit.get('checkpoint', '?')}, prepare {fit.get('prepare')})")
        raise DataError(f"enrolment file {path} was made for {why}, not this one: enrol again "
                        "with `trainer enroll --checkpoint` this checkpoint")
    out = {}
    for i, name in enumerate(arrays["speakers"].tolist()):
        out[name] = SpeakerSums(*(FeatureSums(int(arrays[f"{s}_n"][i]), arrays[f"{s}_sum"][i],
                                              arrays[f"{s}_sumsq"][i]) for s in ("audio", "video")),
                                int(arrays["clips"][i]))
    return out


def gather(t: Trained, paths: list[str], speaker: str | None = None,
           skipped: list[dict] | None = None) -> dict[str, SpeakerSums]:
    """Speakers' sums from ``predict --enroll``: enrolment files, and clips or media to enrol
    from on the spot. A speaker in several sources has their sums added together.

    Raises:
        DataError: a path that does not exist, or an enrolment file that does not fit ``t``.
    """
    for p in paths:
        if not Path(p).exists():
            raise DataError(f"--enroll {p}: no such file or folder")
    files = [p for p in paths if Path(p).is_file() and is_enrolment(Path(p))]
    parts = [load_enrolment(p, t) for p in files]
    rest = [p for p in paths if p not in files]
    if rest:
        parts.append(enrol(t, rest, speaker, skipped))
    out: dict[str, SpeakerSums] = {}
    for part in parts:
        for name, acc in part.items():
            out[name] = out[name].merged(acc) if name in out else acc
    return out


def enroll(checkpoint: str | Path, inputs: list[str], out: str | Path,
           speaker: str | None = None) -> dict:
    """The ``enroll`` verb: every speaker's sums from ``inputs``, written to ``out``.

    Returns ``{"speakers": {name: clips}, "skipped": [{"path", "reason"}], "out": out}``.

    Raises:
        DataError: no input at all, or none usable (the message says why, most often).
    """
    t = load_trained(checkpoint)
    if Path(out).suffix != ".npz":
        raise ValueError(f"--out {out}: an enrolment file is .npz")
    if any(Path(p).resolve() == Path(out).resolve() for p in inputs):
        raise ValueError(f"--out {out} is also an input")
    skipped: list[dict] = []
    sums = enrol(t, inputs, speaker, skipped)
    if not sums and not skipped:
        raise DataError("no clip files given (an empty folder?)")
    if not sums:
        reasons = sorted({s["reason"] for s in skipped})
        raise DataError(f"nothing to enrol: {len(skipped)} input(s) skipped ({reasons[0]}"
                        + (f"; and {len(reasons) - 1} other reason(s)" if len(reasons) > 1
                           else "") + ")")
    save_enrolment(out, sums, {**fit_of(t), "checkpoint": str(checkpoint)})
    return {"speakers": {s: acc.clips for s, acc in sorted(sums.items())}, "skipped": skipped,
            "out": str(out), "norm": t.prepare.get("norm")}
