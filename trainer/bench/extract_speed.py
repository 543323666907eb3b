"""Extraction speed: seconds of media per wall second, on CREMA-D-shaped media made here.

    python -m trainer.bench.extract_speed                  # full: 60 clips, 2 face kinds, 1 and 2 workers
    python -m trainer.bench.extract_speed --preset smoke   # tiny, for tests (figures meaningless)
    python -m trainer bench                          # full mode runs it as bench.json's "extract"

Issue 10's target: at least 4 s of media per wall second on 2 cores for 30 frames/s 480x360
video, so that CREMA-D (about 5.4 h of media) extracts in under 90 minutes. The media are made
here, shaped as CREMA-D ships them: ``VideoFlash/NAME.flv`` (Sorenson H.263, 480x360, 30
frames/s) with ``AudioWAV/NAME.wav`` (16-bit PCM, 16 kHz mono), clips of 2.0 to 3.2 s (CREMA-D:
7442 clips in about 5.4 h, 2.6 s on average). The face is a real photograph, Grace Hopper's
portrait (US Navy, public domain) that matplotlib ships as sample data (matplotlib is a core
dependency, so nothing is added), moved and scaled across frames over a plain wall, so that the
face extractors find and track a face in every frame as they would in CREMA-D. The audio is a
voiced sound (harmonics of a gliding pitch, with noise): what is said does not change the cost
of decoding or of log-mel features, which depends only on the number of samples.

Each run is ``trainer.extract.run.extract`` with the default settings apart from the face kind
(``mediapipe``, the default, and ``opencv``), into a fresh folder, with 1 and 2 workers (the
default on 2 workers three times in full mode, for the target's spread). Then each pretrained
encoder (issue 17): ``wavlm``, ``hubert``, ``wav2vec2`` (with the ``opencv`` face) and
``hsemotion`` (with log-mel audio), from ``--audio-model DIR`` / ``--face-model FILE`` when
given, else from tiny random stand-ins made here (trainer.bench.tiny_encoders: hidden size 32,
2 layers). A stand-in's speed is NOT a real model's: a base model (95 M parameters) is
thousands of times larger, and only its real weights can measure it. Its own report gives the
figures: media seconds, the wall seconds of the extraction (worker start included), their
ratio, and the seconds of each stage (``timing.stage_seconds``, summed over workers, so the
audio and face stages are timed apart).

A worker's start is a fixed cost: the interpreter, and the imports of the first clip (librosa
loads scipy.signal lazily: about 3 s of the first clip's audio stage on an idle core; the face
mesh's graph). On a bench-sized workload it weighs far more than on CREMA-D's 7442 clips, so
each setting also runs on as many clips as it has workers first (a separate ``start`` run):
``steady`` = (media of the whole run - media of the start run) / (their wall difference) is the
rate a long run approaches (with 1 worker, which works in this process, warmed by its start
run: the whole run's rate); the target and CREMA-D's projection use it, and the whole run's
rate, start included, is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import wave as wavfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from trainer.extract.decode import at_rate
from trainer.extract.run import extract
from trainer.extract.settings import ExtractSettings
from trainer.store.files import atomic_write_text

WIDTH, HEIGHT, FPS, SAMPLE_RATE = 480, 360, 30, 16000  # CREMA-D's video and WAV formats
TARGET = 4.0  # media seconds per wall second, on TARGET_WORKERS workers
TARGET_WORKERS = 2
CREMA_D_HOURS = 5.4
CREMA_D_LIMIT_MINUTES = 90
# clips: how many; seconds: their length range; kinds: face extractors; workers: pool sizes.
# encoders: the pretrained encoders' runs (ENCODERS).
PRESETS = {
    # repeats: runs of the default kind on TARGET_WORKERS, the spread the bench's target needs
    "full": dict(clips=60, seconds=(2.0, 3.2), kinds=("mediapipe", "opencv"), workers=(1, 2),
                 encoders=("wavlm", "hubert", "wav2vec2", "hsemotion"), repeats=3),
    # bench --quick (CI): one small run per face kind, in this process (about 10 s)
    "quick": dict(clips=2, seconds=(2.0, 2.0), kinds=("mediapipe", "opencv"), workers=(1,),
                  encoders=()),
    "smoke": dict(clips=2, seconds=(0.6, 0.8), kinds=("opencv",), workers=(1,), encoders=()),
    # the encoders' path alone, for tests (figures meaningless)
    "encoders-smoke": dict(clips=1, seconds=(0.6, 0.6), kinds=(), workers=(1,),
                           encoders=("wavlm", "hsemotion")),
}
ENCODERS = {  # label: (audio, video) of the encoder's runs
    "wavlm": ("wavlm", "opencv"), "hubert": ("hubert", "opencv"),
    "wav2vec2": ("wav2vec2", "opencv"), "hsemotion": ("logmel", "hsemotion"),
}


# ------------------------------------------------------------------------------- media


def portrait() -> np.ndarray:
    """Grace Hopper's head and shoulders (RGB uint8, 360 x 300), from matplotlib's sample data."""
    from matplotlib import cbook  # matplotlib: its sample photo, only for the bench media
    from PIL import Image  # Pillow (with matplotlib): only for the bench media

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB"))[15:375, 120:420]


def frames(n: int, seed: int) -> list[np.ndarray]:
    """``n`` RGB frames of 480x360: the portrait drifting, bobbing and slowly growing over a
    plain wall, as a speaker moves in front of CREMA-D's camera.

    Example:
        >>> len(frames(30, seed=0)), frames(1, seed=0)[0].shape
        (30, (360, 480, 3))
    """
    from PIL import Image  # Pillow (with matplotlib): only for the bench media

    photo = Image.fromarray(portrait())
    rng = np.random.default_rng([seed, 1])
    x0, y0, drift = int(rng.integers(60, 110)), int(rng.integers(0, 20)), rng.uniform(-1, 1)
    out = []
    for i in range(n):
        scale = 0.8 + 0.15 * i / max(1, n - 1)  # the face grows by a fifth over the clip
        patch = np.asarray(photo.resize((int(photo.width * scale), int(photo.height * scale)),
                                        Image.BILINEAR))
        canvas = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        canvas[:] = (118, 124, 130)  # a plain grey wall, as CREMA-D's
        x = int(x0 + 50 * drift * i / max(1, n - 1))  # 10 to 160: the face stays in view
        y = int(y0 + 6 + 6 * np.sin(i / 6))  # 0 to 32; the shoulders leave the bottom edge
        h, w = min(patch.shape[0], HEIGHT - y), min(patch.shape[1], WIDTH - x)
        canvas[y:y + h, x:x + w] = patch[:h, :w]
        out.append(canvas)
    return out


def voice(seconds: float, seed: int) -> np.ndarray:
    """A voiced sound at 16 kHz: harmonics of a pitch gliding around 120-220 Hz under a
    syllable-rate envelope, with a little noise (float32 in [-1, 1])."""
    rng = np.random.default_rng([seed, 2])
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = rng.uniform(120, 220) * (1 + 0.15 * np.sin(2 * np.pi * 1.3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 12))
    wave *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2  # about four syllables a second
    wave = 0.3 * wave / np.abs(wave).max() + 0.01 * rng.standard_normal(len(t))
    return np.clip(wave, -1, 1).astype(np.float32)


def write_flv(path: Path, images: list[np.ndarray]) -> None:
    """Sorenson H.263 in FLV (CREMA-D's codec) at 30 frames/s, with PyAV."""
    import av  # PyAV (the extract extra): encodes the bench media

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        v = out.add_stream("flv", rate=FPS)
        v.width, v.height, v.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        v.bit_rate = 600_000  # about CREMA-D's video bit rate
        for i, img in enumerate(images):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            for pkt in v.encode(frame):
                out.mux(pkt)
        for pkt in v.encode():
            out.mux(pkt)


def write_wav(path: Path, wave: np.ndarray) -> None:
    """16-bit PCM mono WAV (CREMA-D's AudioWAV format), with the standard library."""

    path.parent.mkdir(parents=True, exist_ok=True)
    with wavfile.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((wave * 32767).astype("<i2").tobytes())


def make_media(root: Path, clips: int, seconds: tuple[float, float], seed: int = 0
               ) -> dict[str, int]:
    """A CREMA-D-shaped folder under ``root``; returns each clip's number of video frames.

    Example:
        >>> make_media(Path("/tmp/crema"), clips=2, seconds=(2.0, 2.0))
        {'1001_DFA_ANG_XX': 60, '1002_DFA_ANG_XX': 60}
    """
    rng = np.random.default_rng([seed, 0])
    made = {}
    for i in range(clips):
        n = int(round(rng.uniform(*seconds) * FPS))  # whole frames: audio as long as the video
        stem = f"{1001 + i}_DFA_ANG_XX"
        write_flv(root / "VideoFlash" / f"{stem}.flv", frames(n, seed=seed * 1000 + i))
        write_wav(root / "AudioWAV" / f"{stem}.wav", voice(n / FPS, seed=seed * 1000 + i))
        made[stem] = n
    return made


# ------------------------------------------------------------------------------- measuring


def one_run(media: Path, made: dict[str, int], out: Path, kind: str, workers: int,
            settings: ExtractSettings | None = None, label: str | None = None) -> dict:
    """``extract`` over ``media`` into the empty folder ``out`` with the face kind ``kind`` (or
    ``settings``, named ``label``); the figures of its report, and the share of the frames
    looked at (the video rate's) in which a face was found."""

    settings = settings or ExtractSettings(video=kind)
    r = extract(media, out, settings, workers=workers)
    t = r["timing"]
    looked_at = sum(int(at_rate(np.arange(n) / FPS, settings.video_rate).sum())
                    for n in made.values())
    found = 0
    for rel in r["written"]:
        with np.load(out / rel) as z:
            found += len(z["video_timestamps"])
    stages = t["stage_seconds"]
    return {
        "video": settings.video, "label": label or kind, "audio": settings.audio,
        "workers": workers, "clips": r["counts"]["clips"],
        "written": r["counts"]["written"], "skipped": r["skipped"],
        "media_seconds": t["media_seconds"], "wall_seconds": t["extract_wall_seconds"],
        "media_seconds_per_second": t["media_seconds_per_second"],
        "stage_seconds": stages,
        "audio_seconds": round(stages["decode_audio"] + stages["audio_features"], 3),
        "face_seconds": round(stages["decode_video"] + stages["face"], 3),
        "face_frame_share": round(found / looked_at, 3) if looked_at else None,
    }


def _subset(media: Path, to: Path, stems: dict[str, int]) -> None:
    """The clips named by ``stems`` copied into a CREMA-D-shaped folder ``to``."""
    for stem in stems:
        for sub, ext in (("VideoFlash", "flv"), ("AudioWAV", "wav")):
            (to / sub).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(media / sub / f"{stem}.{ext}", to / sub / f"{stem}.{ext}")


def steady(run: dict, start: dict) -> dict:
    """``run`` with the figures of its ``start`` run (one clip per worker) and the rate beyond
    it: the extra media seconds over the extra wall seconds, without the workers' start. One
    worker works in this process, which the start run has warmed: the run's own rate is then
    already without the start.

    Example:
        >>> steady({"media_seconds": 30.0, "wall_seconds": 8.0},
        ...        {"media_seconds": 2.0, "wall_seconds": 4.0})["steady_media_seconds_per_second"]
        7.0
    """
    extra_media = run["media_seconds"] - start["media_seconds"]
    extra_wall = run["wall_seconds"] - start["wall_seconds"]
    rate = round(extra_media / extra_wall, 3) if extra_media > 0 and extra_wall > 0 else None
    if run.get("workers", 2) <= 1:  # in this process, warm
        rate = run["media_seconds_per_second"]
    return {**run, "start": {k: start.get(k) for k in ("clips", "media_seconds", "wall_seconds",
                                                        "media_seconds_per_second")},
            "steady_media_seconds_per_second": rate}


def verdict(runs: list[dict]) -> dict:
    """For each face kind run on ``TARGET_WORKERS`` workers: its steady rate, whether the
    target holds, and CREMA-D's projected extraction time (the start run's wall, then the
    rest of CREMA-D at the steady rate).

    Example:
        >>> verdict([{"video": "opencv", "workers": 2, "steady_media_seconds_per_second": 5.0,
        ...           "start": {"media_seconds": 5.0, "wall_seconds": 1.0}}])
        {'opencv': {'steady_media_seconds_per_second': 5.0, 'holds': True, \
'crema_d_minutes': 64.8, 'crema_d_under_limit': True}}
    """
    out, by_kind = {}, {}
    for r in runs:
        if r["workers"] == TARGET_WORKERS:
            by_kind.setdefault(r.get("label", r["video"]), []).append(r)
    for kind, rs in by_kind.items():  # a kind run several times: its median run speaks for it
        r = sorted(rs, key=lambda x: x["steady_media_seconds_per_second"] or 0.0)[(len(rs) - 1) // 2]
        rate, start = r["steady_media_seconds_per_second"], r["start"]
        minutes = (start["wall_seconds"] + (CREMA_D_HOURS * 3600 - start["media_seconds"])
                   / rate) / 60 if rate else None
        out[kind] = {"steady_media_seconds_per_second": rate, "holds": bool(rate and rate >= TARGET),
                     "crema_d_minutes": round(minutes, 1) if minutes else None,
                     "crema_d_under_limit": bool(minutes and minutes < CREMA_D_LIMIT_MINUTES)}
    return out


def encoder_settings(label: str, tmp: Path, audio_model: str | None = None,
                     face_model: str | None = None) -> tuple[ExtractSettings, str]:
    """The settings of an encoder's runs and what model they use: the one given, else a tiny
    random stand-in made in ``tmp`` (its speed is not a real model's)."""
    from trainer.bench.tiny_encoders import tiny_hsemotion, tiny_speech  # transformers, onnx

    audio, video = ENCODERS[label]
    if video == "hsemotion":
        face = face_model or str(tiny_hsemotion(tmp / "models" / "tiny_hsemotion.onnx"))
        return (ExtractSettings(audio=audio, video=video, face_model=face),
                face_model or "tiny random stand-in (HSEmotion's signature, 8x8 conv)")
    model = audio_model or str(tiny_speech(tmp / "models" / label, label))
    return (ExtractSettings(audio=audio, video=video, audio_model=model),
            audio_model or "tiny random stand-in (hidden size 32, 2 layers)")


def _speech_kind(folder: str | None) -> str | None:
    if not folder:
        return None
    return json.loads((Path(folder) / "config.json").read_text()).get("model_type")


def measure(preset: str = "full", seed: int = 0, audio_model: str | None = None,
            face_model: str | None = None) -> dict:
    """Every run of the preset; the dict bench.json keeps under ``extract``. ``audio_model``
    (a speech model folder: only its kind runs) and ``face_model`` replace the stand-ins."""
    p = PRESETS[preset]
    given = _speech_kind(audio_model)
    encoders = [e for e in p["encoders"] if not given or ENCODERS[e][0] in (given, "logmel")]
    models = {}
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        media = Path(tmp) / "crema"
        t0 = time.perf_counter()
        made = make_media(media, p["clips"], p["seconds"], seed)
        made_in = time.perf_counter() - t0
        media_seconds = sum(made.values()) / FPS
        runs, starts = [], {}
        for w in p["workers"]:  # a clip per worker, copied once: each run's start-up alone
            starts[w] = (Path(tmp) / f"start-{w}", dict(list(made.items())[:w]))
            _subset(media, *starts[w])
        for kind in p["kinds"]:
            for w in p["workers"]:
                target = kind == p["kinds"][0] and w == TARGET_WORKERS
                for i in range(p.get("repeats", 1) if target else 1):
                    start_media, first = starts[w]
                    start = one_run(start_media, first, Path(tmp) / f"start-{kind}-{w}-{i}",
                                    kind, w)
                    run = one_run(media, made, Path(tmp) / f"out-{kind}-{w}-{i}", kind, w)
                    runs.append(steady(run, start))
        for label in encoders:
            settings, models[label] = encoder_settings(label, Path(tmp), audio_model, face_model)
            for w in p["workers"]:
                start_media, first = starts[w]
                start = one_run(start_media, first, Path(tmp) / f"start-{label}-{w}", label, w,
                                settings, label)
                run = one_run(media, made, Path(tmp) / f"out-{label}-{w}", label, w, settings,
                              label)
                runs.append(steady(run, start))
    return {
        "mode": preset, "cores": len(os.sched_getaffinity(0)),
        "workload": {"clips": p["clips"], "media_seconds": round(media_seconds, 3),
                     "clip_seconds": list(p["seconds"]), "seed": seed,
                     "video": f"FLV (Sorenson H.263), {WIDTH}x{HEIGHT}, {FPS} frames/s",
                     "audio": f"WAV, 16-bit PCM, {SAMPLE_RATE} Hz mono",
                     "made_in_seconds": round(made_in, 3)},
        "runs": runs,
        "encoder_models": models,
        "target": {"media_seconds_per_second": TARGET, "workers": TARGET_WORKERS,
                   "crema_d_hours": CREMA_D_HOURS, "crema_d_limit_minutes": CREMA_D_LIMIT_MINUTES,
                   "by_video": verdict(runs)},
        "method": "extract() with default settings but the face kind, each run into an empty "
                  "folder; media_seconds_per_second = media_seconds / wall_seconds, both from "
                  "its extract.json (wall: the extraction itself, worker start included, not "
                  "finding clips); start: the same setting on one clip per worker first; "
                  "steady_media_seconds_per_second = (media - start media) / (wall - start "
                  "wall) with 2 workers (fresh processes), the run's own rate with 1 (this "
                  "process, warmed by the start run): the rate without the workers' start, "
                  "which the target and CREMA-D's projection use; stage_seconds are summed "
                  "over workers; audio_seconds = decode_audio + audio_features, "
                  "face_seconds = decode_video + face; face_frame_share: face frames kept "
                  "over frames looked at",
        "load_average_at_end": list(os.getloadavg()),
        "seconds": round(time.time() - t_start, 3),
    }


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def table(r: dict) -> str:
    """One line per run, and the target's verdict."""
    lines = [f"extraction: {r['workload']['clips']} CREMA-D-shaped clips, "
             f"{r['workload']['media_seconds']:.1f} s of media"]
    for x in r["runs"]:
        s = x["stage_seconds"]
        lines.append(f"  {x.get('label', x['video']):9} {x['workers']} worker(s): "
                     f"{x['media_seconds_per_second']:.2f} s media/s (wall {x['wall_seconds']:.1f} "
                     f"s), steady {_f(x['steady_media_seconds_per_second'])}; audio "
                     f"{x['audio_seconds']:.1f} s (decode {s['decode_audio']:.1f}, "
                     f"features {s['audio_features']:.1f}), face {x['face_seconds']:.1f} s "
                     f"(decode {s['decode_video']:.1f}, face {s['face']:.1f}), "
                     f"faces in {x['face_frame_share']:.0%} of frames")
    for kind, t in r["target"]["by_video"].items():
        lines.append(f"  target >= {TARGET:g} s media/s on {TARGET_WORKERS} workers, {kind}: "
                     f"{'holds' if t['holds'] else 'MISSED'} (steady "
                     f"{_f(t['steady_media_seconds_per_second'])}); CREMA-D {CREMA_D_HOURS} h "
                     f"in {t['crema_d_minutes']} min")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Extraction speed on CREMA-D-shaped media.")
    ap.add_argument("--preset", default="full", choices=tuple(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the figures here as JSON")
    ap.add_argument("--audio-model", default=None, metavar="DIR",
                    help="a real speech model folder for its kind's runs (default: tiny stand-ins)")
    ap.add_argument("--face-model", default=None, metavar="FILE",
                    help="a real HSEmotion ONNX file (default: a tiny stand-in)")
    a = ap.parse_args()
    report = measure(a.preset, a.seed, a.audio_model, a.face_model)
    if a.out:
        atomic_write_text(Path(a.out), json.dumps(report, indent=2) + "\n")
    print(table(report), file=sys.stdout)
