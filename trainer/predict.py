"""``predict``: class probabilities per clip, each clip prepared as the model was evaluated.

    python -m trainer predict --checkpoint runs/demo/checkpoints/best.pt clip.npz more-clips/
    python -m trainer predict --checkpoint best.pt --enroll speakers.npz clip.npz
    python -m trainer predict --checkpoint best.pt --enroll her-clips/ --speaker alice clip.mp4

A model trained with ``--norm speaker`` standardises a clip with its speaker's statistics. They
come, in this order, from:
1. ``--enroll``: enrolment files (``trainer enroll``), or clips or media to enrol from here;
2. the other clips of the same speaker given in this call, as ``evaluate`` groups them;
3. else the checkpoint's measured fallback (``trainer.fallback``): such a clip's JSON line says
   ``"norm": "fallback: ..."``, and one warning on stderr names the fallback, its validation
   macro-F1 against the one with speaker statistics, and how to enrol.
The speaker of a clip is the one its file name tells, or ``--speaker`` for every input.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Callable

from trainer.checkpoint import Trained, load_trained
from trainer.enroll import gather
from trainer.errors import DataError
from trainer.evaluate import predict_proba
from trainer.fallback import describe, fallback_stats
from trainer.inputs import InputReader, input_files, speaker_of
from trainer.data import Clip
from trainer.prepare import pool_clip, speaker_stats, standardise, standardise_clip


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def fallback_warning(t: Trained, checkpoint: str | Path, speakers: list[str]) -> str:
    """The one line ``predict`` prints when clips fell back: which fallback, its validation
    macro-F1 against speaker statistics', and how to enrol."""
    fb = t.checkpoint.get("fallback") or {}
    figures = fb.get("validation_macro_f1")
    measured = (f"which scored validation macro-F1 {figures['fallback']:.3f} against "
                f"{figures['speaker']:.3f} with speaker statistics" if figures else
                "for which this checkpoint records no validation figures")
    shown = ", ".join(speakers[:3]) + (f" and {len(speakers) - 3} more" if len(speakers) > 3
                                       else "")
    return (f"warning: this model standardises by speaker and has no statistics for {shown} "
            f"(no enrolment, no other clip of theirs given): their clips used the fallback, "
            f"{describe(fb)}, {measured}. Enrol a speaker from a few of their clips: python -m "
            f"trainer enroll --checkpoint {checkpoint} --out speakers.npz CLIPS..., then "
            "predict --enroll speakers.npz")


def predict(checkpoint: str | Path, inputs: list[str], enroll: list[str] | None = None,
            speaker: str | None = None, warn: Callable[[str], None] = _stderr,
            models: dict | None = None) -> list[dict]:
    """Per clip: path, predicted label, probabilities and how it was standardised (``norm``),
    or the reason it could not be read.

    Args:
        checkpoint: a trainer checkpoint.
        inputs: clip files (.npz), raw media clips (any video ``extract`` takes, a CREMA-D
            .flv with its .wav), folders of either; media extracted as the checkpoint's
            training data were.
        enroll: enrolment files, or clips or media to enrol their speakers from.
        speaker: the speaker of every input (and of enrolment clips); default: file names.
        warn: receives each warning line (default: stderr): an ``--enroll`` input skipped, and
            at most one for all the clips that fell back.
        models: for raw media extracted with pretrained encoders, their files
            (``audio_model``, ``face_model``; default: where the training data's were).
    """
    t = load_trained(checkpoint)
    norm = t.prepare.get("norm", "none")
    skipped: list[dict] = []
    enrolled = gather(t, enroll, speaker, skipped) if enroll else {}
    for s in skipped:
        warn(f"warning: --enroll {s['path']} skipped: {s['reason']}")
    if enroll and norm != "speaker":
        warn(f"warning: this model standardises with norm {norm}, not by speaker: "
             "--enroll is not used")
    files = input_files(inputs)
    if not files:
        raise DataError("no clip files given")
    reader = InputReader(t, models)
    results, clips, where = [], [], []
    for f in files:
        got = reader.read(f, speaker_of(f, speaker) or f"clip:{f}")
        if isinstance(got, str):
            results.append({"path": str(f), "error": got})
            continue
        where.append(len(results))
        results.append({"path": str(f)})
        clips.append(pool_clip(got, t.prepare))
    if not clips:
        return results
    if norm == "speaker":
        ready, hows, fell = _by_speaker(t, clips, enrolled)
        for i, how in zip(where, hows):
            results[i]["norm"] = how
        if fell:
            warn(fallback_warning(t, checkpoint, sorted(set(fell))))
    else:
        ready = standardise(clips, norm)
    probs = predict_proba(t.model, [t.normalizer(c) for c in ready], modality=t.modality)
    for i, p in zip(where, probs):
        results[i]["label"] = t.labels[int(p.argmax())]
        results[i]["probabilities"] = {lab: round(float(x), 6) for lab, x in zip(t.labels, p)}
    return results


def _by_speaker(t: Trained, clips: list[Clip], enrolled: dict) -> tuple[list[Clip], list[str],
                                                                       list[str]]:
    """Pooled clips standardised with enrolment, their group given here, or the fallback;
    with how each was, and the speakers that fell back."""
    n = Counter(c.speaker for c in clips)
    groups = speaker_stats([c for c in clips if c.speaker not in enrolled and n[c.speaker] > 1])
    ready, hows, fell = [], [], []
    for c in clips:
        if c.speaker in enrolled:
            stats, how = enrolled[c.speaker].stats(), (f"speaker (enrolled, "
                                                       f"{enrolled[c.speaker].clips} clips)")
        elif c.speaker in groups:
            stats, how = groups[c.speaker], f"speaker ({n[c.speaker]} clips given together)"
        else:
            fb = t.checkpoint.get("fallback")
            stats, how = fallback_stats(fb, c), f"fallback: {describe(fb)}"
            fell.append(c.speaker if not c.speaker.startswith("clip:") else
                        "a clip whose name tells no speaker")
        ready.append(standardise_clip(c, stats))
        hows.append(how)
    return ready, hows, fell
