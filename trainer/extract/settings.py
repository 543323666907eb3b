"""How clips are extracted (``ExtractSettings``): the flags of ``extract`` as one value, its
checks, and ``params()``, what every clip file records and a resume compares."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from trainer.extract import encoders
from trainer.extract.audio import check_audio_kind
from trainer.extract.resume import sha256_file
from trainer.extract.speech import SPEECH_KINDS

VIDEO_KINDS = ("mediapipe", "opencv", "openface", "facenet", "hsemotion")


@dataclass(frozen=True)
class ExtractSettings:
    """How clips are extracted; ``params()`` is what a clip file records and resume compares."""

    # logmel | egemaps | egemaps-functionals (trainer.extract.audio) | wavlm | hubert | wav2vec2
    # (trainer.extract.speech)
    audio: str = "logmel"
    # mediapipe | opencv | facenet (trainer.extract.face) | openface | hsemotion (face_encoder)
    video: str = "mediapipe"
    video_rate: float = 15.0  # video frames per second at most, picked by their true times
    sample_rate: int = 16000  # audio is resampled to this, mono
    n_mels: int = 64  # log-mel bands (logmel only)
    min_face_frames: int = 5  # a clip with fewer frames with a face is skipped (1/3 s at 15 fps)
    max_seconds: float = 60.0  # a longer clip is skipped: its audio is held whole in memory
    openface_csv: str | None = None  # folder of OpenFace FeatureExtraction CSVs (openface only)
    face_weights: str | None = None  # weights file (facenet only)
    audio_model: str | None = None  # folder, s3:// prefix or (allow_download) hub id: speech
    audio_layers: str | None = None  # "7-10": mean of those layers (default: speech.py's)
    audio_model_name: str | None = None  # its name in params (default: from audio_model)
    face_model: str | None = None  # ONNX file or s3:// object (hsemotion only)
    allow_download: bool = False  # audio_model may be a hub id to download

    def check(self) -> None:
        """One-line ``ValueError`` for a bad value, before any clip is read."""

        if self.audio not in SPEECH_KINDS:
            check_audio_kind(self.audio)
        encoders.check(self)
        if self.video not in VIDEO_KINDS:
            raise ValueError(f"unknown video features {self.video!r}; use one of "
                             f"{', '.join(VIDEO_KINDS)}")
        for name in ("video_rate", "sample_rate", "n_mels", "max_seconds"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):  # nan and inf too
                raise ValueError(f"--{name.replace('_', '-')} must be positive and finite, "
                                 f"not {value:g}")
        if self.min_face_frames < 1:
            raise ValueError("--min-face-frames must be at least 1")
        if self.video == "openface":
            if not self.openface_csv:
                raise ValueError("--video openface needs --openface-csv DIR (OpenFace "
                                 "FeatureExtraction's CSVs, one STEM.csv per clip)")
            if not Path(self.openface_csv).is_dir():
                raise FileNotFoundError(f"no OpenFace CSV folder {self.openface_csv}")
        if self.face_weights and not Path(self.face_weights).is_file():
            raise FileNotFoundError(f"no face weights file {self.face_weights}")

    def params(self) -> dict:
        """The settings that define the features, without local paths: a weights file is named
        by its content's SHA-256, the OpenFace folder not at all (its CSVs are the features).
        ``min_face_frames`` and ``max_seconds`` decide which clips are kept, not what a clip's
        features mean: resume checks them against each clip file's frames."""
        p = {"audio": self.audio, "video": self.video, "video_rate": float(self.video_rate),
             "sample_rate": int(self.sample_rate)}
        if self.audio == "logmel":
            p["n_mels"] = int(self.n_mels)
        if self.face_weights:
            p["face_weights_sha256"] = _weights_sha256(str(Path(self.face_weights).resolve()))
        p.update(encoders.encoder_params(self))  # model names, weights' hashes, layers
        return p

    @classmethod
    def from_params(cls, settings: dict) -> "ExtractSettings":
        """Settings from a clip file's ``params["settings"]`` (paths are given separately).

        Example:
            >>> ExtractSettings.from_params({"audio": "egemaps", "video": "opencv"}).video_rate
            15.0
        """
        names = {f.name for f in fields(cls)} - {"openface_csv", "face_weights", "audio_model",
                                                 "face_model", "allow_download"}
        got = {k: v for k, v in settings.items() if k in names}
        if isinstance(got.get("audio_layers"), list):  # params keep [first, last]
            got["audio_layers"] = "-".join(map(str, got["audio_layers"]))
        if "audio_model" in settings:  # the model's name; its files are given separately
            got["audio_model_name"] = settings["audio_model"]
        return cls(**got)


_weights_sha256 = lru_cache(maxsize=4)(sha256_file)  # a weights file is large: hashed once
