"""Emotional raw media made here, in CREMA-D's layout: the closest this machine gets to real data.

    python -m trainer.bench.emotional_media --out media/emo --speakers 24 --clips-per-speaker 12
    python -m trainer extract --media media/emo --out data/emo --workers 1
    python -m trainer.bench.emotional_media --split data/emo --test-speakers 8 --val-speakers 3
    python -m trainer train --data data/emo/manifest.csv --out runs/emo

Writes ``VideoFlash/NAME.flv`` (Sorenson H.263, 480x360, 30 frames/s) and ``AudioWAV/NAME.wav``
(16-bit PCM, 16 kHz mono) with CREMA-D names ``SSSS_SEN_EMO_XX``, so ``extract`` reads them
unchanged; ``media.csv`` records how each clip was made. ``--split DATA`` writes the training
manifest ``DATA/manifest.csv`` with a split column fixed by speaker.

- Speech: espeak-ng says one of CREMA-D's 12 sentences. Each class moves pitch, rate and
  loudness as the emotion literature describes them (arousal: anger, fear and happiness high,
  fast and loud; sadness low, slow and quiet; disgust low-ish and slow; neutral between), by an
  amount scaled by the speaker's expressiveness, from the speaker's own voice variant, base
  pitch, rate and recording level, with per-clip jitter: no single threshold separates the
  classes, and speakers differ.
- Face: a real photograph (Grace Hopper's portrait, matplotlib's sample data) with a smooth
  expression warp per class at a per-clip strength (mouth corners up for HAP, down for SAD, brows
  lowered and drawn in for ANG, brows raised and eyes widened for FEA, upper lip and nose sides
  raised for DIS, none for NEU), reached over the first 0.4 s; the jaw drops and the mouth opens
  with the speech's loudness, frame by frame, so both streams share one clock. Each speaker is
  another "identity": a fixed warp of the face's shape, width, scale, position, roll, colour
  balance and background; the head drifts and bobs within a clip.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import shutil
import subprocess
import sys
import tempfile
import time
import wave as wavfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainer.bench.extract_speed import (
    FPS,
    HEIGHT,
    SAMPLE_RATE,
    WIDTH,
    portrait,
    write_flv,
    write_wav,
)
from trainer.data import LABELS, MANIFEST_NAME, parse_name, write_manifest
from trainer.store.files import atomic_write_text

SENTENCES = {  # CREMA-D's sentence codes and texts
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting", "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full", "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock", "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket", "ITS": "I think I've seen this before",
    "TSI": "The surface is slick", "WSI": "We'll stop in a couple of minutes"}
VOICES = [f"en+m{i}" for i in range(1, 8)] + [f"en+f{i}" for i in range(1, 5)]
# Per class at full expressiveness: espeak pitch points (0-99 scale), rate and loudness factors.
PROSODY = {"ANG": (10, 1.15, 1.7), "DIS": (-6, 0.86, 0.85), "FEA": (20, 1.25, 1.25),
           "HAP": (15, 1.12, 1.45), "NEU": (0, 1.0, 1.0), "SAD": (-10, 0.78, 0.6)}
ESPEAK_RATE = 22050  # espeak-ng writes 22050 Hz WAVs

# Points of the portrait (pixels of its 300x360 crop; the face mesh's landmarks, found once).
MOUTH_L, MOUTH_R, UPPER_LIP, LOWER_LIP, CHIN = (114, 265), (183, 262), (147, 258), (148, 277), \
    (152, 312)
NOSE_L, NOSE_R = (118, 225), (177, 223)
BROW_R, BROW_L = ((127, 164), (88, 154), (67, 164)), ((161, 161), (199, 147), (220, 157))  # in->out
LID_R, LID_L = ((99, 172), (103, 181)), ((189, 168), (186, 177))  # upper, lower eyelid
SEAM_Y = 265  # where the lips meet


def _both(right, left, dx, dy, sigma):
    """The same move on both sides of the face, mirrored in x (dx > 0 moves outward)."""
    return [(*right, -dx, dy, sigma), (*left, dx, dy, sigma)]


# Per class, at strength 1: (x, y, dx, dy, sigma) Gaussian displacements of the portrait.
EXPRESSIONS = {
    "NEU": [],
    "HAP": _both(MOUTH_L, MOUTH_R, 4, -9, 12) + _both(LID_R[1], LID_L[1], 0, -3, 7),
    "SAD": _both(MOUTH_L, MOUTH_R, 1, 8, 12) + _both(BROW_R[0], BROW_L[0], 0, -5, 9)
    + [(*LOWER_LIP, 0, -2, 9)],
    "ANG": _both(BROW_R[0], BROW_L[0], -6, 10, 10) + _both(BROW_R[1], BROW_L[1], 0, 7, 10)
    + _both(LID_R[0], LID_L[0], 0, 2, 6) + [(*UPPER_LIP, 0, 2, 8), (*LOWER_LIP, 0, -3, 9)],
    "FEA": [p for i in range(3) for p in _both(BROW_R[i], BROW_L[i], -2 if i == 0 else 0, -8, 10)]
    + _both(LID_R[0], LID_L[0], 0, -3, 6) + _both(LID_R[1], LID_L[1], 0, 2, 6)
    + _both(MOUTH_L, MOUTH_R, 6, 2, 12),
    "DIS": [(*UPPER_LIP, 0, -6, 10)] + _both(NOSE_L, NOSE_R, 0, -4, 9)
    + _both(BROW_R[0], BROW_L[0], 0, 3, 10) + _both(MOUTH_L, MOUTH_R, 0, 3, 10),
}
JAW = [(*LOWER_LIP, 0, 9, 14), (*CHIN, 0, 7, 28)]  # at full opening, below the seam only


@dataclass
class Speaker:
    code: str  # CREMA-D's four digits
    voice: str
    pitch: float  # espeak pitch points
    rate: float  # words a minute
    gain_db: float  # recording level
    expressive: float  # scales the class's prosody and expression
    scale: float  # face height / frame height
    stretch: float  # face width factor
    angle: float  # degrees of roll
    x: float  # face centre in the frame, pixels
    y: float
    colour: tuple[float, float, float]  # RGB gains
    wall: tuple[int, int, int]  # background colour
    seed: int  # its shape warp and wall texture


@dataclass
class ClipSpec:
    stem: str
    speaker: str
    sentence: str
    emotion: str
    voice: str
    pitch: float
    rate: float
    amplitude: float
    gain_db: float
    strength: float  # the expression warp's strength
    seed: int


def speakers(n: int, seed: int = 0) -> list[Speaker]:
    """``n`` speakers 1001, 1002, ..., each with its own voice and face."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for i in range(n):
        scale = rng.uniform(0.72, 0.95)
        out.append(Speaker(
            code=str(1001 + i), voice=VOICES[i % len(VOICES)], pitch=rng.uniform(32, 62),
            rate=rng.uniform(150, 185), gain_db=rng.uniform(-5, 4),
            expressive=rng.uniform(0.6, 1.3), scale=scale, stretch=rng.uniform(0.88, 1.12),
            angle=rng.uniform(-7, 7), x=rng.uniform(170, 310),
            y=HEIGHT / 2 + rng.uniform(-10, 1) + (1 - scale) * HEIGHT / 2,
            colour=tuple(rng.uniform(0.82, 1.15, 3).round(3)),
            wall=tuple(int(v) for v in rng.integers(70, 190, 3)), seed=int(rng.integers(1 << 30))))
    return out


def plan(people: list[Speaker], clips_per_speaker: int, seed: int = 0,
         expression: tuple[float, float] = (0.35, 1.0)) -> list[ClipSpec]:
    """Each speaker's clips, the classes in turn (balanced), with per-clip jitter; a clip's
    expression strength is uniform in ``expression`` times its speaker's expressiveness. Sentences
    come in a random order per speaker, so that no sentence tells the class (as in CREMA-D,
    where every sentence is said in every emotion)."""
    rng = np.random.default_rng([seed, 11])
    out = []
    for s_i, s in enumerate(people):
        codes = rng.permutation(list(SENTENCES))
        for k in range(clips_per_speaker):
            emotion = LABELS[(k + s_i) % len(LABELS)]
            sentence = str(codes[k % len(codes)])
            pitch, rate, amp = prosody(s, emotion, rng)
            out.append(ClipSpec(
                stem=f"{s.code}_{sentence}_{emotion}_XX", speaker=s.code, sentence=sentence,
                emotion=emotion, voice=s.voice, pitch=pitch, rate=rate, amplitude=amp,
                gain_db=round(s.gain_db, 2),
                strength=0.0 if emotion == "NEU" else round(s.expressive * rng.uniform(*expression),
                                                             3),
                seed=int(rng.integers(1 << 30))))
    return out


def prosody(s: Speaker, emotion: str, rng: np.random.Generator | None = None
            ) -> tuple[float, float, float]:
    """espeak pitch (0-99), rate (words a minute) and amplitude (0-200) of one clip; without
    ``rng``, no jitter.

    Example:
        >>> s = speakers(1)[0]
        >>> prosody(s, "ANG")[0] > prosody(s, "NEU")[0] > prosody(s, "SAD")[0]
        True
    """
    dp, fr, fa = PROSODY[emotion]
    j = rng.normal(0, [5, 0.07, 0.15]) if rng is not None else np.zeros(3)
    pitch = s.pitch + s.expressive * dp + j[0]
    rate = s.rate * math.exp(s.expressive * math.log(fr) + j[1])
    amp = 60 * math.exp(s.expressive * math.log(fa) + j[2])
    return round(float(np.clip(pitch, 0, 99)), 1), round(rate), round(float(np.clip(amp, 5, 200)))


def speech(text: str, voice: str, pitch: float, rate: float, amplitude: float) -> np.ndarray:
    """espeak-ng's speech, resampled to 16 kHz (float32 in [-1, 1])."""
    from scipy.signal import resample_poly  # scipy (with librosa, the extract extra)

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run([exe, "-w", str(path), "-v", voice, "-p", str(round(pitch)),
                        "-s", str(round(rate)), "-a", str(round(amplitude)), text],
                       check=True, capture_output=True)
        with wavfile.open(str(path)) as w:
            assert w.getframerate() == ESPEAK_RATE and w.getsampwidth() == 2
            x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    return resample_poly(x, 320, 441).astype(np.float32)  # 22050 * 320 / 441 = 16000


def opening(wave: np.ndarray, frames: int) -> np.ndarray:
    """The mouth's opening at each video frame, 0 to 1: the speech's RMS over that frame's
    1/30 s, relative to the clip's loud frames, lightly smoothed."""
    hop = SAMPLE_RATE // FPS
    rms = np.array([np.sqrt(np.mean(wave[i * hop:(i + 1) * hop] ** 2) + 1e-12)
                    for i in range(frames)])
    level = np.clip(rms / (np.percentile(rms, 90) + 1e-9), 0, 1.2) / 1.2
    return np.convolve(level, [0.25, 0.5, 0.25], mode="same")


def field(points: list[tuple], scale: float = 1.0) -> np.ndarray:
    """Sum of Gaussian displacements (x, y, dx, dy, sigma) over the portrait: (H, W, 2) float32."""
    h, w = 360, 300
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((h, w, 2), np.float32)
    for x, y, dx, dy, sigma in points:
        g = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2)) * scale
        out[..., 0] += g * dx
        out[..., 1] += g * dy
    return out


def face_frames(s: Speaker, c: ClipSpec, open_: np.ndarray) -> list[np.ndarray]:
    """The clip's RGB frames: the speaker's face with the clip's expression, its mouth opening
    by ``open_`` frame by frame, drifting over the speaker's wall."""
    import cv2  # OpenCV headless (the extract extra): remap and placement, only for the media

    rng = np.random.default_rng([c.seed, 3])
    srng = np.random.default_rng([s.seed, 5])
    photo = portrait().astype(np.float32) * np.array(s.colour, np.float32)
    identity = field([(*p, *srng.normal(0, 2.5, 2), 14) for p in
                      (MOUTH_L, MOUTH_R, UPPER_LIP, NOSE_L, NOSE_R, CHIN, *BROW_R, *BROW_L)])
    fidget = field([(*p, *rng.normal(0, 1.2, 2), 12) for p in (MOUTH_L, MOUTH_R, BROW_R[0],
                                                              BROW_L[0])])
    expression = field(EXPRESSIONS[c.emotion], c.strength)
    ys = np.mgrid[0:360, 0:300][0].astype(np.float32)
    jaw = field(JAW) * (0.5 + 0.5 * np.tanh((ys - SEAM_Y) / 4))[..., None]  # below the seam only
    grid = np.stack(np.mgrid[0:360, 0:300][::-1], -1).astype(np.float32)  # (H, W, 2): x, y
    wall = np.empty((HEIGHT, WIDTH, 3), np.float32)
    wall[:] = s.wall
    wall += cv2.GaussianBlur(srng.normal(0, 8, (HEIGHT, WIDTH, 1)).astype(np.float32),
                             (0, 0), 3)[..., None]
    wall = np.clip(wall, 0, 255).astype(np.uint8)
    drift, phase = rng.uniform(-1, 1, 2) * 12, rng.uniform(0, 2 * np.pi)
    n, out = len(open_), []
    for i in range(n):
        ramp = min(1.0, i / (0.4 * FPS))  # the expression builds over 0.4 s
        d = identity + fidget + ramp * expression + open_[i] * jaw
        m = (grid - d).astype(np.float32)  # backward map: a point at p moves to about p + d(p)
        img = cv2.remap(photo, m, None, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT)
        if open_[i] > 0.05:  # the mouth's dark inside between the parted lips
            mask = np.zeros(img.shape[:2], np.float32)
            gap = 4.5 * open_[i]
            cv2.ellipse(mask, (int(UPPER_LIP[0]), int(SEAM_Y + gap)), (24, max(1, int(gap))),
                        0, 0, 360, 1.0, -1, cv2.LINE_AA)
            mask = cv2.GaussianBlur(mask, (0, 0), 1.2)[..., None]
            img = img * (1 - mask) + np.array([80, 30, 35], np.float32) * mask
        t = i / max(1, n - 1)
        cx, cy = s.x + drift[0] * t, s.y + drift[1] * t + 4 * np.sin(i / 7 + phase)
        k = s.scale * HEIGHT / 360
        a = np.deg2rad(s.angle + 1.5 * np.sin(i / 11 + phase))
        ca, sa = np.cos(a) * k, np.sin(a) * k
        # portrait -> frame: scale (wider by ``stretch``), roll, then centre at (cx, cy)
        lin = np.array([[ca * s.stretch, -sa], [sa * s.stretch, ca]])
        aff = np.hstack([lin, (np.array([cx, cy]) - lin @ np.array([150.0, 180.0]))[:, None]])
        frame = wall.copy()
        cv2.warpAffine(np.clip(img, 0, 255).astype(np.uint8), aff, (WIDTH, HEIGHT), dst=frame,
                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
        out.append(frame)
    return out


def make_clip(root: Path, s: Speaker, c: ClipSpec) -> dict:
    """One clip's FLV and WAV under ``root``; its row of media.csv."""
    rng = np.random.default_rng([c.seed, 9])
    voice = speech(SENTENCES[c.sentence], c.voice, c.pitch, c.rate, c.amplitude)
    lead, trail = rng.uniform(0.2, 0.45, 2)
    n = math.ceil((lead + trail + len(voice) / SAMPLE_RATE) * FPS)  # whole video frames
    wave = np.zeros(round(n * SAMPLE_RATE / FPS), np.float32)
    at = int(lead * SAMPLE_RATE)
    wave[at:at + len(voice)] = voice[:len(wave) - at] * 10 ** (c.gain_db / 20)
    wave += rng.normal(0, 3e-4, len(wave)).astype(np.float32)  # the room's noise floor
    wave = np.clip(wave, -1, 1)
    write_wav(root / "AudioWAV" / f"{c.stem}.wav", wave)
    write_flv(root / "VideoFlash" / f"{c.stem}.flv", face_frames(s, c, opening(wave, n)))
    return {**asdict(c), "text": SENTENCES[c.sentence], "frames": n, "seconds": round(n / FPS, 3)}


def make_media(root: Path, n_speakers: int, clips_per_speaker: int, seed: int = 0,
               expression: tuple[float, float] = (0.35, 1.0), progress: bool = False
               ) -> list[dict]:
    """A CREMA-D-shaped folder of emotional clips under ``root`` and its ``media.csv``."""
    people = speakers(n_speakers, seed)
    by_code = {s.code: s for s in people}
    rows = []
    for i, c in enumerate(plan(people, clips_per_speaker, seed, expression)):
        rows.append(make_clip(root, by_code[c.speaker], c))
        if progress and (i + 1) % 12 == 0:
            print(f"{i + 1} clips", file=sys.stderr, flush=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(root / "media.csv", buf.getvalue())
    return rows


def split_manifest(data: Path, test: int = 8, val: int = 3, seed: int = 0) -> Path:
    """``data/manifest.csv`` for the clip files under ``data``: ``test`` and ``val`` speakers
    drawn by ``seed``, the rest training; paths relative to the CSV."""
    rows = []
    for p in sorted(data.rglob("*.npz")):
        label, speaker = parse_name(p.stem)
        rows.append((p.relative_to(data).as_posix(), label, speaker))
    names = sorted({r[2] for r in rows})
    if len(names) <= test + val:  # at least one training speaker
        raise ValueError(f"{len(names)} speakers: too few for {test} test and {val} validation")
    order = np.random.default_rng(seed).permutation(names)
    split = {n: "test" for n in order[:test]} | {n: "val" for n in order[test:test + val]}
    out = data / MANIFEST_NAME
    write_manifest(out, [(*r, split.get(r[2], "train")) for r in rows])
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Emotional CREMA-D-shaped media (espeak-ng speech, "
                                 "a warped photographed face), or a split manifest for them.")
    ap.add_argument("--out", default=None, metavar="DIR", help="media folder to make")
    ap.add_argument("--speakers", type=int, default=24, help="(default: 24)")
    ap.add_argument("--clips-per-speaker", type=int, default=12, help="(default: 12)")
    ap.add_argument("--seed", type=int, default=0, help="(default: 0)")
    ap.add_argument("--expression", type=float, nargs=2, default=(0.35, 1.0), metavar=("LO", "HI"),
                    help="range of a clip's expression strength, before the speaker's "
                    "expressiveness (0.6-1.3) scales it (default: 0.35 1.0)")
    ap.add_argument("--split", default=None, metavar="DATA",
                    help="instead: write DATA/manifest.csv for extracted clips (default: none)")
    ap.add_argument("--test-speakers", type=int, default=8, help="(default: 8)")
    ap.add_argument("--val-speakers", type=int, default=3, help="(default: 3)")
    a = ap.parse_args()
    if a.split:
        print(split_manifest(Path(a.split), a.test_speakers, a.val_speakers, a.seed))
    elif a.out:
        t0 = time.perf_counter()
        made = make_media(Path(a.out), a.speakers, a.clips_per_speaker, a.seed,
                          tuple(a.expression), progress=True)
        print(f"{len(made)} clips, {sum(r['seconds'] for r in made):.1f} s of media, in "
              f"{time.perf_counter() - t0:.1f} s: {a.out}")
    else:
        ap.error("give --out DIR (make media) or --split DATA (write a manifest)")
