"""Audio features at 100 frames per second, each frame with its true time (its window's centre).

    feats, times, info = audio_features(wave, 16000)                    # log-mel (librosa)
    feats, times, info = audio_features(wave, 16000, kind="egemaps")    # 25 eGeMAPSv02 LLDs

Kinds:
- ``logmel`` (default): log mel filterbank energies from librosa (ISC licence): 25 ms Hann
  windows every 10 ms, ``n_mels`` bands up to 8 kHz, natural log of the power.
- ``egemaps``: the 25 eGeMAPSv02 low-level descriptors per 10 ms frame, from audEERING's
  ``opensmile`` package. Its licence allows research use only, so it is an optional extra:
  ``pip install 'av-emotion-trainer[egemaps]'``.
- ``egemaps-functionals``: the 88 eGeMAPSv02 functionals of the whole clip, one vector repeated
  at 100 frames per second, as the original project stored its audio. It carries NO time
  information (every frame is the same); it exists only to reproduce that project.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from trainer.errors import MediaError

AUDIO_KINDS = ("logmel", "egemaps", "egemaps-functionals")
FRAME_RATE = 100  # frames per second, every kind
WINDOW_SECONDS = 0.025  # log-mel analysis window
LOG_FLOOR = 1e-10  # power floor before the log: silence is a finite, very low value


def check_audio_kind(kind: str) -> None:
    """Raise a one-line ``ValueError`` for an unknown kind or a missing optional package, before
    any clip is read."""
    if kind not in AUDIO_KINDS:
        raise ValueError(f"unknown audio features {kind!r}; use one of {', '.join(AUDIO_KINDS)}")
    if kind.startswith("egemaps"):
        _opensmile()


def _opensmile():
    try:
        import opensmile  # opensmile (the egemaps extra, research-only licence): optional
    except ImportError:
        raise ValueError("--audio egemaps needs the optional opensmile package (audEERING's "
                         "research-only licence): pip install 'av-emotion-trainer[egemaps]'") \
            from None
    return opensmile


@lru_cache(maxsize=2)
def _smile(level: str):
    """One openSMILE extractor per process and level (making one parses its config)."""
    opensmile = _opensmile()
    return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                           feature_level=getattr(opensmile.FeatureLevel, level))


def _logmel(wave: np.ndarray, sample_rate: int, n_mels: int) -> tuple[np.ndarray, np.ndarray, dict]:
    import librosa  # librosa (the extract extra): slow to import, loaded on first use

    n_fft = int(round(WINDOW_SECONDS * sample_rate))  # 400 samples at 16 kHz
    hop = sample_rate // FRAME_RATE  # 160
    if len(wave) < n_fft:
        raise MediaError(f"audio shorter than one {WINDOW_SECONDS * 1000:.0f} ms window")
    # center=False: no padded frames at the edges, so every frame is real audio and its time is
    # its window's centre: 12.5 ms, 22.5 ms, ...
    mel = librosa.feature.melspectrogram(y=wave, sr=sample_rate, n_fft=n_fft, hop_length=hop,
                                         window="hann", center=False, power=2.0, n_mels=n_mels,
                                         fmin=0.0, fmax=sample_rate / 2)  # (F, T)
    feats = np.log(np.maximum(mel, LOG_FLOOR)).T.astype(np.float32)  # (T, F)
    times = (np.arange(len(feats)) * hop + n_fft / 2) / sample_rate
    info = {"name": "logmel", "package": "librosa", "version": librosa.__version__,
            "n_mels": n_mels, "n_fft": n_fft, "hop_length": hop, "window": "hann",
            "fmin": 0.0, "fmax": sample_rate / 2, "mel": "slaney", "log": f"ln(max(power, "
            f"{LOG_FLOOR:g}))", "sample_rate": sample_rate, "frame_rate": FRAME_RATE}
    return feats, times, info


def _egemaps(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, dict]:
    opensmile = _opensmile()
    df = _smile("LowLevelDescriptors").process_signal(wave, sample_rate)  # rows: 10 ms frames
    if not len(df):
        raise MediaError("audio too short for eGeMAPS frames")
    start = df.index.get_level_values("start").total_seconds().to_numpy()
    end = df.index.get_level_values("end").total_seconds().to_numpy()
    info = {"name": "egemaps", "package": "opensmile", "version": opensmile.__version__,
            "feature_set": "eGeMAPSv02", "level": "LowLevelDescriptors",
            "columns": list(df.columns), "sample_rate": sample_rate, "frame_rate": FRAME_RATE}
    # Each row's window centre; the last row's end is cut at the signal's end, so the half
    # width is the rows' typical one, not each row's own.
    return df.to_numpy(np.float32), start + np.median(end - start) / 2, info


def _egemaps_functionals(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, dict]:
    opensmile = _opensmile()
    df = _smile("Functionals").process_signal(wave, sample_rate)  # one row for the clip
    n = max(1, int(len(wave) / sample_rate * FRAME_RATE))
    feats = np.repeat(df.to_numpy(np.float32)[:1], n, axis=0)  # (T, 88), every row the same
    info = {"name": "egemaps-functionals", "package": "opensmile",
            "version": opensmile.__version__, "feature_set": "eGeMAPSv02", "level": "Functionals",
            "columns": list(df.columns), "sample_rate": sample_rate, "frame_rate": FRAME_RATE,
            "time_information": "none: one vector per clip repeated at 100 frames per second"}
    return feats, (np.arange(n) + 0.5) / FRAME_RATE, info


def audio_features(wave: np.ndarray, sample_rate: int, kind: str = "logmel",
                   n_mels: int = 64) -> tuple[np.ndarray, np.ndarray, dict]:
    """Features [T, F] float32, their times [T] in seconds (frame centres, 100 per second) and an
    info dict (name, package, version, settings) for the clip file's ``params``.

    Raises:
        MediaError: audio too short for one frame, or features that are not finite.
        ValueError: unknown ``kind``, or ``opensmile`` missing for the eGeMAPS kinds.

    Example:
        >>> feats, times, info = audio_features(np.zeros(16000, np.float32), 16000)
        >>> feats.shape, times[:2], info["name"]
        ((98, 64), array([0.0125, 0.0225]), 'logmel')
    """
    check_audio_kind(kind)
    wave = np.asarray(wave, np.float32)
    if kind == "logmel":
        feats, times, info = _logmel(wave, sample_rate, n_mels)
    elif kind == "egemaps":
        feats, times, info = _egemaps(wave, sample_rate)
    else:
        feats, times, info = _egemaps_functionals(wave, sample_rate)
    if not np.isfinite(feats).all():
        raise MediaError(f"{kind} features are not finite")
    return feats, times.astype(np.float64), info
