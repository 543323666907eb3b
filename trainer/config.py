"""The training configuration: one dataclass, overridable from a YAML/JSON file and from flags.

Precedence: defaults < ``--config FILE`` < command-line flags. The resolved configuration is
printed at start, written to ``config.json`` and stored in every checkpoint.

Example config file (``python -m trainer train --config my.yaml --data demo-data --out runs/x``):
    model: hybrid
    epochs: 30
    d_model: 96
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    data: str = ""  # folder, manifest CSV or s3:// prefix of clip feature files
    out: str = ""  # run directory: folder or s3:// prefix
    model: str = "hybrid"  # hybrid | lstm (the baseline)
    epochs: int = 50  # maximum epochs
    batch_size: int = 24
    lr: float = 5e-4  # Adam learning rate
    weight_decay: float = 0.0
    patience: int = 10  # early stopping: epochs without a better validation macro-F1
    lr_patience: int = 3  # ReduceLROnPlateau: epochs without improvement before lr *= lr_factor
    lr_factor: float = 0.5
    grad_clip: float = 1.0  # max gradient norm
    focal_gamma: float = 2.0
    class_weights: bool = True  # inverse-frequency alpha in the focal loss
    seed: int = 0
    split: str = "speaker"  # speaker (held-out speakers) | random (optimistic: speakers leak)
    val_fraction: float = 0.15  # share of speakers (or clips, for random) for validation
    test_fraction: float = 0.15
    modality: str = "both"  # both | audio | video: zero the other modality (ablation)
    bucket: bool = True  # length-bucketed batches (less padding)
    d_model: int = 128  # hybrid width
    heads: int = 4
    audio_stride: int = 4  # hybrid: audio frames averaged per step (100 -> 25 frames/s)
    video_stride: int = 2  # hybrid: video frames averaged per step (30 -> 15 frames/s)
    dropout: float = 0.2  # small data sets are the norm here (RAVDESS: 1,440 clips)
    audio_fps: float = 100.0  # only for clips without timestamps
    threads: int = 0  # torch intra-op threads; 0 = all cores
    resume: bool = False  # continue from <out>/checkpoints/last.pt
    cache_dir: str = ""  # local cache for s3:// data (default ~/.cache/av-emotion)


CHOICES = {"model": ("hybrid", "lstm"), "split": ("speaker", "random"),
           "modality": ("both", "audio", "video")}


def defaults() -> dict:
    return asdict(TrainConfig())


def load_file(path: str | Path) -> dict:
    """Settings from a YAML or JSON file; unknown keys are an error, not ignored."""
    text = Path(path).read_text()
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings")
    unknown = set(data) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"config file {path}: unknown setting(s) {', '.join(sorted(unknown))}")
    return data


def resolve(file: str | None = None, **flags) -> TrainConfig:
    """Defaults, then the file, then flags that were given (not None)."""
    values = defaults()
    if file:
        values.update(load_file(file))
    values.update({k: v for k, v in flags.items() if v is not None})
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, not "
                             f"{getattr(cfg, key)!r}")
    for key in ("epochs", "batch_size", "patience", "audio_stride", "video_stride"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be at least 1")
    if not cfg.lr > 0:
        raise ValueError("lr must be positive")
    if cfg.d_model % cfg.heads or cfg.d_model % 2:
        raise ValueError("d_model must be even and divisible by heads")
    if not (0 < cfg.val_fraction < 1 and 0 < cfg.test_fraction < 1
            and cfg.val_fraction + cfg.test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum below 1")


def model_settings(cfg: TrainConfig, audio_dim: int, video_dim: int, n_classes: int) -> dict:
    """The model's own constructor arguments (the config object never reaches the model)."""
    s = {"audio_dim": audio_dim, "video_dim": video_dim, "n_classes": n_classes}
    if cfg.model == "hybrid":
        s.update(d_model=cfg.d_model, heads=cfg.heads, dropout=cfg.dropout,
                 audio_stride=cfg.audio_stride, video_stride=cfg.video_stride)
    return s
