"""Pretrained speech encoders (WavLM, HuBERT, wav2vec2) through ``transformers``: 50 frames per
second of hidden states, each frame with its true time.

    enc = speech_encoder("wavlm", "models/wavlm-base-plus")      # a local folder: no network
    feats, times, info = enc(wave)      # float16 [T, D], seconds [T], params' info

The model is frozen (``eval()``, ``torch.inference_mode``), loaded once per process. It comes
from a local folder (``config.json``, the weights, ``preprocessor_config.json``, as
``huggingface-cli download microsoft/wavlm-base-plus --local-dir DIR`` leaves them); a hub id is
downloaded only with ``allow_download`` (``--allow-download``). The folder's weights are named
in ``params`` by their SHA-256 (``weights_sha256``), so two folders with the same name but other
weights never pass for the same features.

Timing: the models' convolution stack (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2) reads 400
samples per frame and moves 320, so at 16 kHz frame i covers samples [320 i, 320 i + 400) and is
centred at (320 i + 200) / 16000 s; the frame count is the model's own output length. A model
with another stack is refused (its times would be wrong).

Layers (``--audio-layers``): the mean of a range of transformer layers' outputs (1 = the first
transformer layer; 0 = the convolutional features after projection). Default: the upper-middle
third (``default_layers``: 7-10 of a base model's 12, 13-20 of a large one's 24). Layer-wise
probes of these models (SUPERB's weighted-sum weights for emotion; Pasad et al., 2021/2023, on
wav2vec2 and HuBERT) find paralinguistic and emotion information peaking in the middle to upper
layers, while the last layers specialise toward the pre-training targets; a mean over a few
layers there is a robust single choice. No real data set was measured here to pick it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from trainer.errors import MediaError

SPEECH_KINDS = ("wavlm", "hubert", "wav2vec2")
SAMPLE_RATE = 16000
HOP, WINDOW = 320, 400  # samples per frame step and per frame of the standard conv stack
FRAME_RATE = SAMPLE_RATE / HOP  # 50 frames per second
CONV_KERNEL, CONV_STRIDE = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")


def frame_times(n: int) -> np.ndarray:
    """Centre times (seconds) of ``n`` encoder frames from the clip's first sample.

    Example:
        >>> frame_times(3)
        array([0.0125, 0.0325, 0.0525])
    """
    return (HOP * np.arange(n) + WINDOW / 2) / SAMPLE_RATE


def default_layers(n_layers: int) -> tuple[int, int]:
    """The upper-middle third of ``n_layers`` transformer layers (first, last; 1-based).

    Example:
        >>> default_layers(12), default_layers(24), default_layers(2)
        ((7, 10), (13, 20), (2, 2))
    """
    lo = n_layers // 2 + 1
    return lo, max(lo, (5 * n_layers) // 6)


def parse_layers(text: str | None, n_layers: int) -> tuple[int, int]:
    """``--audio-layers`` (``"7-10"``, ``"9"``, or None for the default) as (first, last),
    checked against the model's ``n_layers``; one-line ``ValueError`` when bad.

    Example:
        >>> parse_layers("6-9", 12), parse_layers("12", 12), parse_layers(None, 12)
        ((6, 9), (12, 12), (7, 10))
    """
    if text is None or str(text).strip() == "":
        return default_layers(n_layers)
    try:
        parts = [int(x) for x in str(text).split("-")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise ValueError(f"--audio-layers {text!r}: give a layer or a range, e.g. 7-10")
    lo, hi = parts[0], parts[-1]
    if not 0 <= lo <= hi <= n_layers:
        raise ValueError(f"--audio-layers {text!r}: the model has layers 0 (its convolutional "
                         f"features) to {n_layers}; give FIRST-LAST within them, FIRST <= LAST")
    return lo, hi


def model_folder(model: str, kind: str, allow_download: bool = False) -> Path:
    """The local folder of ``--audio-model``: the folder itself, or with ``allow_download`` a
    hub id fetched into the Hugging Face cache. One-line errors, and no network call without
    ``allow_download``."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise ValueError(f"--audio-model {model} is a file: give the model's folder (config.json,"
                         " the weights and preprocessor_config.json)")
    looks_like_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if not allow_download:
        raise ValueError(f"--audio-model {model}: no such folder" + (
            "; a hub id is downloaded only with --allow-download (nothing was fetched)"
            if looks_like_id else ""))
    if not looks_like_id:
        raise ValueError(f"--audio-model {model}: neither a folder nor a hub id (owner/name)")
    from huggingface_hub import snapshot_download  # with transformers: only when asked to

    try:
        return Path(snapshot_download(model, allow_patterns=[
            "*.json", "*.safetensors", "pytorch_model.bin", "*.txt"]))
    except Exception as e:  # noqa: BLE001 - no network, unknown id: one line for the user
        raise ValueError(f"--audio-model {model}: download failed ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]})") from None


def read_config(folder: Path, kind: str) -> dict:
    """The model's ``config.json``, checked: the kind's model type and the standard conv stack."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"--audio-model {folder}: no config.json (not a transformers model "
                         "folder)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--audio-model {folder}: unreadable config.json ({e})") from None
    if cfg.get("model_type") != kind:
        raise ValueError(f"--audio {kind} but {folder} holds a {cfg.get('model_type')!r} model; "
                         f"use --audio {cfg.get('model_type')} or another folder")
    if (tuple(cfg.get("conv_kernel", ())) != CONV_KERNEL
            or tuple(cfg.get("conv_stride", ())) != CONV_STRIDE):
        raise ValueError(f"--audio-model {folder}: its convolution stack (kernels "
                         f"{cfg.get('conv_kernel')}, strides {cfg.get('conv_stride')}) is not the "
                         "standard 400-sample window, 320-sample step whose frame times extract "
                         "assumes")
    if not (folder / "preprocessor_config.json").is_file():
        raise ValueError(f"--audio-model {folder}: no preprocessor_config.json (the feature "
                         "extractor's settings: download it with the model)")
    return cfg


def weight_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ValueError(f"--audio-model {folder}: no weights file (model.safetensors or "
                         "pytorch_model.bin)")
    return files


@lru_cache(maxsize=8)
def _weights_hash(files: tuple[str, ...], stamp: tuple) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def weights_sha256(folder: Path) -> str:
    """SHA-256 over the folder's weight files (name and bytes, sorted by name); cached per
    file set, size and modification time, so a run hashes a model once."""
    files = weight_files(folder)
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _weights_hash(tuple(str(p) for p in files), stamp)


def model_name(model: str) -> str:
    """The name ``params`` gives ``--audio-model``: a hub id as given, a folder or an ``s3://``
    prefix by its last part (no local path: the same model elsewhere is the same name), without
    the content hash of deploy's ``models/NAME-HASH/`` upload.

    Example:
        >>> model_name("microsoft/wavlm-base-plus"), model_name("/data/models/wavlm-base-plus/")
        ('microsoft/wavlm-base-plus', 'wavlm-base-plus')
        >>> model_name("s3://b/models/wavlm-base-plus-0123456789ab/")
        'wavlm-base-plus'
    """
    path = Path(model.rstrip("/"))
    looks_like_id = model.count("/") == 1 and not model.startswith((".", "/", "~", "s3:"))
    if looks_like_id and not path.exists():
        return model
    if model.startswith("s3://") and path.parent.name == "models":
        return re.sub(r"-[0-9a-f]{12}$", "", path.name)
    return path.name


def speech_params(kind: str, folder: Path, layers: str | None, name: str) -> dict:
    """What the clip files' ``params["settings"]`` record of the speech encoder: the model's
    ``name``, its weights' hash and the layers (no local path)."""
    cfg = read_config(folder, kind)
    lo, hi = parse_layers(layers, int(cfg["num_hidden_layers"]))
    return {"audio_model": name, "audio_model_sha256": weights_sha256(folder),
            "audio_layers": [lo, hi]}


class SpeechEncoder:
    """One loaded, frozen model; ``enc(wave)`` gives (features float16 [T, D], times, info)."""

    def __init__(self, kind: str, folder: Path, layers: str | None):
        import torch  # torch: only for the speech encoders (extract workers run without it)
        import transformers  # transformers (the extract extra): only for these encoders
        from transformers import AutoFeatureExtractor, AutoModel  # the same, its loaders

        cfg = read_config(folder, kind)
        self.layers = parse_layers(layers, int(cfg["num_hidden_layers"]))
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # per-clip bars would bury extract's
        if multiprocessing.parent_process() is not None:
            torch.set_num_threads(1)  # a pool worker: one core each, as the pool sizes itself
        self._torch = torch
        try:
            self._fe = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
            self._model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        except (OSError, ValueError) as e:
            raise ValueError(f"--audio-model {folder}: cannot load the model "
                             f"({' '.join(str(e).split())[:200]})") from None
        for p in self._model.parameters():
            p.requires_grad_(False)
        self.dim = int(cfg["hidden_size"])
        self.info = {"name": kind, "package": "transformers", "version": transformers.__version__,
                     "model_type": cfg.get("model_type"),
                     "architecture": type(self._model).__name__, "dim": self.dim,
                     "layers": list(self.layers), "pooling": "mean over the layers' outputs",
                     "n_layers": int(cfg["num_hidden_layers"]), "frame_rate": FRAME_RATE,
                     "times": "frame i centred at (320 i + 200) / 16000 s",
                     "sample_rate": SAMPLE_RATE, "dtype": "float16", "source": str(folder)}

    def __call__(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        if len(wave) < WINDOW:
            raise MediaError(f"audio shorter than one {WINDOW / SAMPLE_RATE * 1000:.0f} ms "
                             "encoder frame")
        x = self._fe(np.asarray(wave, np.float32), sampling_rate=SAMPLE_RATE,
                     return_tensors="pt")
        with self._torch.inference_mode():
            out = self._model(x["input_values"], output_hidden_states=True)
            lo, hi = self.layers
            h = self._torch.stack(out.hidden_states[lo:hi + 1]).mean(0)[0]  # (T, D)
        feats = h.float().numpy()
        if not np.isfinite(feats).all():
            raise MediaError("speech encoder features are not finite")
        return feats.astype(np.float16), frame_times(len(feats)), dict(self.info)


@lru_cache(maxsize=2)
def speech_encoder(kind: str, folder: str, layers: str | None) -> SpeechEncoder:
    """The encoder for ``kind`` in ``folder`` (a resolved local folder), loaded once per
    process: a worker keeps it for all its clips."""
    return SpeechEncoder(kind, Path(folder), layers)
