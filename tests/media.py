"""Real test media, made on the spot: espeak-ng speech, a photographed face, PyAV encoding.

Nothing is downloaded: the speech comes from Debian's ``espeak-ng`` (``.ci/run`` installs it),
the face from scikit-image's bundled sample photo ``astronaut()`` (Eileen Collins, NASA, public
domain), cropped to head and shoulders and moved and scaled across frames over a plain
background, the way a face moves in CREMA-D's 480x360 30 fps clips. Files are short (about a
second) so that tests stay fast.

    from tests.media import make_crema, make_ravdess
    crema = make_crema(tmp_path / "crema")      # VideoFlash/NAME.flv + AudioWAV/NAME.wav
    ravdess = make_ravdess(tmp_path / "ravdess")  # Actor_NN/01-01-EE-01-01-01-NN.mp4

Each maker returns a dict naming what it made and why, so tests can assert on each file.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

WIDTH, HEIGHT, FPS = 480, 360, 30  # CREMA-D's frame size and rate
BACKGROUND = (96, 104, 112)  # a plain grey-blue wall


def speech(text: str = "Kids are talking by the door.", seconds: float = 1.2,
           sample_rate: int = 22050) -> np.ndarray:
    """Speech from espeak-ng as float32 mono at espeak's own 22050 Hz, padded or cut to
    ``seconds`` (extract must resample it to 16 kHz).

    Example:
        >>> speech("It's eleven o'clock.", 1.0).shape
        (22050,)
    """
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng (.ci/run does)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-s", "190", "-w", str(wav), text], check=True, capture_output=True)
        wave, sr = sf.read(wav, dtype="float32")
    assert sr == sample_rate, f"espeak-ng wrote {sr} Hz"
    n = int(round(seconds * sample_rate))
    return np.pad(wave, (0, max(0, n - len(wave))))[:n]


def _head() -> np.ndarray:
    """The astronaut's head and shoulders (RGB uint8), without the flag and the shuttle."""
    from skimage import data

    return data.astronaut()[0:250, 115:335]


def _paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    h, w = patch.shape[:2]
    canvas[y:y + h, x:x + w] = patch


def frames(n: int, face: bool = True, seed: int = 0) -> list[np.ndarray]:
    """``n`` RGB frames of WIDTH x HEIGHT: the face (or, with ``face=False``, a photo of coffee,
    which has no face) drifting across and slowly growing, as a speaker moves.

    Example:
        >>> len(frames(30)), frames(1)[0].shape
        (30, (360, 480, 3))
    """
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(_head() if face else data.coffee()[60:320, 120:360])
    rng = np.random.default_rng(seed)
    x0, y0 = rng.integers(20, 120), rng.integers(10, 40)
    out = []
    for i in range(n):
        scale = 0.85 + 0.25 * i / max(1, n - 1)  # grows by about a quarter over the clip
        size = (int(photo.width * scale), int(photo.height * scale))
        patch = np.asarray(photo.resize(size, Image.BILINEAR))
        canvas = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        canvas[:] = BACKGROUND
        x = int(x0 + 120 * i / max(1, n - 1))  # drifts right
        y = int(y0 + 8 * np.sin(i / 5))  # and bobs
        ph, pw = min(patch.shape[0], HEIGHT - y), min(patch.shape[1], WIDTH - x)
        _paste(canvas, patch[:ph, :pw], x, y)
        out.append(canvas)
    return out


def write_video(path: Path, images: list[np.ndarray], fps: int = FPS,
                audio: tuple[np.ndarray, int] | None = None, audio_start: float = 0.0) -> Path:
    """Encode ``images`` (and optionally ``audio = (wave, sample_rate)``) with PyAV.

    ``.flv``: Sorenson H.263 (``flv1``), CREMA-D's codec, video only (CREMA-D's audio is the
    WAV). ``.mp4``: H.264 with an AAC audio track, as RAVDESS ships; its first sample is at
    ``audio_start`` seconds on the file's clock (the picture's first frame is at 0).
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        codec = "flv" if path.suffix == ".flv" else "libx264"
        v = out.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if codec == "libx264":
            v.options = {"preset": "ultrafast"}
        a = None
        if audio is not None:
            wave, sr = audio
            a = out.add_stream("aac", rate=sr)
            a.layout = "mono"
        for i, img in enumerate(images):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for pkt in v.encode(frame):
                out.mux(pkt)
        for pkt in v.encode():
            out.mux(pkt)
        if a is not None:
            wave, sr = audio
            step = 1024
            for start in range(0, len(wave), step):
                chunk = wave[start:start + step].astype(np.float32)[None, :]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate, frame.pts = sr, start + int(round(audio_start * sr))
                for pkt in a.encode(frame):
                    out.mux(pkt)
            for pkt in a.encode():
                out.mux(pkt)
    return path


def write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sample_rate, subtype="PCM_16")
    return path


def truncate(path: Path, keep: float = 0.4) -> Path:
    """Cut a file to its first ``keep`` share, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def make_crema(root: Path, seconds: float = 1.0) -> dict[str, Path]:
    """A CREMA-D-shaped folder: ``VideoFlash/NAME.flv`` with ``AudioWAV/NAME.wav``.

    - ``face``: 1001_DFA_ANG_XX, a face in every frame, with speech;
    - ``no_face``: 1002_IEO_HAP_HI, speech over a video without a face (to be skipped);
    - ``no_wav``: 1003_TIE_SAD_XX, an FLV whose WAV is missing (to be reported).
    """
    n, sr = int(round(seconds * FPS)), 22050
    wave = speech(seconds=seconds, sample_rate=sr)
    made = {}
    for key, stem, face in (("face", "1001_DFA_ANG_XX", True),
                            ("no_face", "1002_IEO_HAP_HI", False),
                            ("no_wav", "1003_TIE_SAD_XX", True)):
        images = frames(n, face, seed=len(made))
        made[key] = write_video(root / "VideoFlash" / f"{stem}.flv", images)
        if key != "no_wav":
            write_wav(root / "AudioWAV" / f"{stem}.wav", wave, sr)
    return made


def make_ravdess(root: Path, seconds: float = 1.0) -> dict[str, Path]:
    """A RAVDESS-shaped folder of ``Actor_NN/MM-01-EE-01-01-01-NN.mp4`` files (H.264 + AAC).

    - ``face``: Actor_01/01-01-03-01-01-01-01.mp4, audio-visual, a face (HAP, speaker 01);
    - ``video_only``: Actor_01/02-01-03-01-01-01-01.mp4 (modality 02: to be reported);
    - ``truncated``: Actor_02/01-01-04-01-01-01-02.mp4 cut to 40 % (to be reported).
    """
    n, sr = int(round(seconds * FPS)), 44100
    wave = speech("Dogs are sitting by the door.", seconds=seconds, sample_rate=22050)
    wave = np.interp(np.arange(int(seconds * sr)) / sr, np.arange(len(wave)) / 22050, wave)
    made = {
        "face": write_video(root / "Actor_01" / "01-01-03-01-01-01-01.mp4", frames(n, True, 3),
                            audio=(wave.astype(np.float32), sr)),
        "video_only": write_video(root / "Actor_01" / "02-01-03-01-01-01-01.mp4",
                                  frames(n, True, 4)),
        "truncated": write_video(root / "Actor_02" / "01-01-04-01-01-01-02.mp4",
                                 frames(n, True, 5), audio=(wave.astype(np.float32), sr)),
    }
    truncate(made["truncated"])
    return made
