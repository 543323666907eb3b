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
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from trainer.extract.cli import parse_extract_args
from trainer.extract.places import check_folder


@dataclass
class TrainConfig:
    data: str = ""  # folder, manifest CSV or s3:// prefix of clip feature files
    out: str = ""  # run directory: folder or s3:// prefix
    model: str = "hybrid"  # hybrid | lstm (the baseline)
    epochs: int = 50  # maximum epochs
    batch_size: int = 24
    lr: float = 5e-4  # AdamW learning rate
    weight_decay: float = 0.05  # AdamW decoupled weight decay (docs/training.md)
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
    fusion: str = "cross"  # hybrid: cross (cross-modal attention) | late (the ablation)
    time_scale_min: float = 0.02  # hybrid: seconds; the sharpest cross-modal head's time scale
    time_scale_max: float = 2.0  # hybrid: seconds; the broadest head's
    audio_rate: float = 25.0  # hybrid: audio pooled to this many frames per second (0 = as is)
    video_rate: float = 15.0  # hybrid: video pooled to this many frames per second (0 = as is)
    norm: str = "speaker"  # speaker | clip | none: standardisation before the train-set scaling
    time_mask: float = 0.05  # SpecAugment: up to 2 masks per stream of up to this many seconds
    feature_mask: float = 0.3  # SpecAugment: up to 2 masks per stream, each of up to this share
    # of its features; chosen by the worst case of the robustness suite (docs/training.md)
    dropout: float = 0.4  # chosen by the worst case of the robustness suite (docs/training.md)
    input_rank: int = 0  # hybrid: each stream's input projection through this many dims (0 = full)
    input_dropout: float = 0.0  # hybrid: share of input features dropped whole per clip (training)
    center: bool = False  # hybrid: temporal branches read each clip's deviation from its mean
    stats_head: bool = False  # hybrid: per-clip mean and std of each input feature to the logits
    sync_head: bool = True  # hybrid: correlations along fixed class directions (trainer.synchrony)
    sync_pcs: int = 3  # hybrid: principal directions per stream the synchrony head reads too
    linear_head: bool = True  # hybrid: a regression on clip summaries, fitted after training
    mixup: float = 0.0  # training: mixup's Beta(alpha, alpha) inside each batch (0 = off)
    ema: float = 0.0  # training: decay of the weights' moving average that validation and
    # the test read (trainer.averaging; 0 = off)
    ensemble: int = 1  # models trained side by side from their own initial weights, their
    # probabilities averaged (trainer.ensemble; 1 = one model)
    noise: float = 0.0  # training: Gaussian noise of this std added to the standardised inputs
    select: str = "macro_f1"  # early stopping and best.pt: validation macro_f1 or loss
    audio_fps: float = 100.0  # only for clips without timestamps
    threads: int = 0  # torch intra-op threads; 0 = all cores
    resume: bool = False  # continue from <out>/checkpoints/last.pt
    cache_dir: str = ""  # local cache for s3:// data (default ~/.cache/av-emotion)
    media: str = ""  # raw media (folder or s3:// prefix) to extract into `data` first; "" = none
    extract_args: str = ""  # extract flags for `media`, e.g. "--video opencv" (trainer.extract.cli)


CHOICES = {"model": ("hybrid", "lstm"), "split": ("speaker", "random"),
           "modality": ("both", "audio", "video"), "fusion": ("cross", "late"),
           "norm": ("speaker", "clip", "none"), "select": ("macro_f1", "loss")}


def defaults() -> dict:
    return asdict(TrainConfig())


# What a setting's declared type accepts: ints only ints, floats ints and floats, bools only
# bools (``True`` is an int to Python, and ``epochs: yes`` is a bool to YAML: neither is a number).
_KINDS = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("text", lambda v: isinstance(v, str)),
}


def _typed(name: str, value, where: str):
    """``value`` if it fits the field's type (an int given for a float becomes a float), else a
    one-line ``ValueError`` that names the setting and ``where`` it came from."""
    kind = str(next(f.type for f in fields(TrainConfig) if f.name == name))
    what, fits = _KINDS[kind]
    if not fits(value):
        hint = ""
        if kind in ("int", "float") and isinstance(value, str):
            try:
                float(value)
                hint = " (unquoted; YAML reads 5e-4 as text, write 5.0e-4)"
            except ValueError:
                pass
        raise ValueError(f"{where}: {name} must be {what}, not {value!r}{hint}")
    return float(value) if kind == "float" else value


def _parse(path: Path, text: str):
    """The file's content; a syntax error is one line naming the file, line and column."""
    if str(path).endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e.msg} at line {e.lineno}, "
                             f"column {e.colno}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"config file {path} is not valid YAML: {problem}{at}") from None


def load_file(path: str | Path) -> dict:
    """Settings from a YAML or JSON file; unknown keys and values of the wrong type are an error
    (one line naming the file), not ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} cannot be read: {type(e).__name__}") from None
    data = _parse(path, text)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings")
    names = {f.name for f in fields(TrainConfig)}
    unknown = {str(k) for k in data} - names
    if unknown:
        raise ValueError(f"config file {path}: unknown setting(s) {', '.join(sorted(unknown))}")
    return {k: _typed(k, v, f"config file {path}") for k, v in data.items()}


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
    """Every setting's type and range; the first bad one is a one-line ``ValueError``."""
    for f in fields(TrainConfig):
        _typed(f.name, getattr(cfg, f.name), "setting")
        if str(f.type) == "float" and not math.isfinite(getattr(cfg, f.name)):
            raise ValueError(f"{f.name} must be a finite number, not {getattr(cfg, f.name)}")
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, not "
                             f"{getattr(cfg, key)!r}")
    for key in ("epochs", "batch_size", "patience", "heads", "d_model", "ensemble"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be at least 1, not {getattr(cfg, key)}")
    for key in ("audio_rate", "video_rate", "time_mask", "weight_decay", "focal_gamma",
                "lr_patience", "seed"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key} must not be negative, not {getattr(cfg, key)}")
    if cfg.threads < 0:
        raise ValueError(f"threads must be 0 (all cores) or more, not {cfg.threads}")
    if not 0 <= cfg.feature_mask < 1:
        raise ValueError("feature_mask must be in [0, 1)")
    for key in ("dropout", "input_dropout", "ema"):
        if not 0 <= getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be in [0, 1)")
    for key in ("input_rank", "noise", "mixup"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key} must not be negative, not {getattr(cfg, key)}")
    if not 0 < cfg.lr_factor < 1:
        raise ValueError("lr_factor must be in (0, 1)")
    for key in ("lr", "grad_clip", "audio_fps"):
        if not getattr(cfg, key) > 0:
            raise ValueError(f"{key} must be positive, not {getattr(cfg, key)}")
    if not 0 < cfg.time_scale_min <= cfg.time_scale_max:
        raise ValueError("time_scale_min must be positive and at most time_scale_max")
    if cfg.d_model % cfg.heads or cfg.d_model % 2:
        raise ValueError(f"d_model must be even and divisible by heads (d_model {cfg.d_model}, "
                         f"heads {cfg.heads})")
    if cfg.cache_dir:  # a file there is one line now, not a traceback at the first download
        check_folder(Path(cfg.cache_dir).expanduser(), "--cache-dir")
    if cfg.extract_args and not cfg.media:
        raise ValueError("extract_args needs media (the raw media to extract)")
    if cfg.media:  # its flags checked here too, so that deploy refuses bad ones before the run
        parse_extract_args(cfg.extract_args)
    if not (0 < cfg.val_fraction < 1 and 0 < cfg.test_fraction < 1
            and cfg.val_fraction + cfg.test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum below 1")


def model_settings(cfg: TrainConfig, audio_dim: int, video_dim: int, n_classes: int) -> dict:
    """The model's own constructor arguments (the config object never reaches the model)."""
    s = {"audio_dim": audio_dim, "video_dim": video_dim, "n_classes": n_classes}
    if cfg.model == "hybrid":
        s.update(d_model=cfg.d_model, heads=cfg.heads, dropout=cfg.dropout, fusion=cfg.fusion,
                 time_scales=(cfg.time_scale_min, cfg.time_scale_max),
                 input_rank=cfg.input_rank, input_dropout=cfg.input_dropout,
                 center=cfg.center, stats_head=cfg.stats_head,
                 sync_head=cfg.sync_head and cfg.modality == "both" and cfg.fusion == "cross",
                 sync_pcs=cfg.sync_pcs, linear_head=cfg.linear_head)
    if cfg.ensemble > 1:  # absent for one model: its checkpoints read as before
        s["members"] = cfg.ensemble
    return s


def prepare_settings(cfg: TrainConfig) -> dict:
    """How clips are prepared for the model (trainer.prepare); stored in every checkpoint.

    The lstm baseline reads the streams at their own rates, as the original project's did.
    """
    hybrid = cfg.model == "hybrid"
    return {"audio_rate": cfg.audio_rate if hybrid else 0.0,
            "video_rate": cfg.video_rate if hybrid else 0.0, "norm": cfg.norm}
