"""What a resumed extraction keeps: the clip files already made as this run would make them.

    made = made_by("logmel", face.info)           # the packages and versions a clip records
    is_done(out / "clip.npz", settings.params(), made, min_face_frames=5, max_seconds=60.0)

A clip file is kept when it records the same settings (``ExtractSettings.params()``), the same
extractor packages at the same versions, for OpenFace the same CSV (by its hash), and when this
run would keep it too: at least ``--min-face-frames`` frames with a face and no longer than
``--max-seconds``. Any other clip file is extracted again over the old one.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from trainer.data import read_extraction

# The package each audio kind's clip files name in params; every other kind is opensmile's
# (egemaps). The speech encoders' weights are compared by their hash in the settings.
AUDIO_PACKAGES = {"logmel": "librosa", "wavlm": "transformers", "hubert": "transformers",
                  "wav2vec2": "transformers"}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def package_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def made_by(audio_kind: str, face_info: dict | None) -> dict:
    """``{"audio": (package, version), "video": (package, version) or None}`` as this run's
    clip files record them in ``params``; ``face_info`` is the face extractor's ``info`` (None
    for OpenFace, whose CSVs are compared by hash instead).

    Example:
        >>> made_by("logmel", {"package": "mediapipe", "version": "0.10.21"})["video"]
        ('mediapipe', '0.10.21')
    """
    audio = AUDIO_PACKAGES.get(audio_kind, "opensmile")
    video = (face_info["package"], face_info["version"]) if face_info else None
    return {"audio": (audio, package_version(audio)), "video": video}


def is_done(path: Path, settings: dict, made: dict, min_face_frames: int, max_seconds: float,
            csv_sha256: str | None = None) -> bool:
    """Whether the clip file ``path`` is what this run would write (see the module's docstring);
    ``csv_sha256`` is the hash of the clip's OpenFace CSV now (None: not OpenFace)."""
    if not path.is_file():
        return False
    params = read_extraction(path)
    if params is None or params["settings"] != settings:
        return False
    for stream, want in made.items():
        info = params.get(stream) or {}
        if want is not None and (info.get("package"), info.get("version")) != tuple(want):
            return False
    if csv_sha256 is not None and (params.get("video") or {}).get("csv_sha256") != csv_sha256:
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            times = [np.asarray(z[k]) for k in ("audio_timestamps", "video_timestamps")]
    except Exception:  # noqa: BLE001 - unreadable or without times: made again
        return False
    spans = [float(t[-1] - t[0]) for t in times if len(t)]
    return len(times[1]) >= min_face_frames and max(spans, default=0.0) <= max_seconds
