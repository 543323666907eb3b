"""The training flags: one per ``TrainConfig`` field, with its help and default, shared by
``train``, ``cv`` and the deploy's check of the flags it sends to an instance.

Example:
    >>> p = argparse.ArgumentParser(); add_train_flags(p)
    >>> p.parse_args(["--epochs", "30"]).epochs
    30
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from trainer.config import CHOICES, TrainConfig, defaults, resolve
from trainer.errors import RaisingParser

HELP = {
    "data": "clip feature files: a folder (searched recursively), a manifest CSV, or s3://bucket/prefix",
    "out": "run directory: a folder or s3://bucket/prefix",
    "model": "hybrid (TCN + cross-modal attention) or lstm (the BiLSTM baseline)",
    "epochs": "maximum epochs",
    "batch_size": "clips per batch",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW (decoupled) weight decay",
    "patience": "early stopping: epochs without a better validation macro-F1",
    "lr_patience": "ReduceLROnPlateau: epochs without improvement before the lr drops",
    "lr_factor": "ReduceLROnPlateau: factor the lr is multiplied by",
    "grad_clip": "maximum gradient norm",
    "focal_gamma": "focal loss gamma (0 = cross-entropy)",
    "class_weights": "inverse-frequency class weights as focal alpha",
    "seed": "seed of the split, the initial weights and the batch order",
    "split": "speaker: held-out speakers; random: clips at random (optimistic: speakers leak)",
    "val_fraction": "share of speakers (or clips) for validation",
    "test_fraction": "share of speakers (or clips) for test",
    "modality": "both, or audio/video to zero the other modality (ablation)",
    "bucket": "length-bucketed batches (less padding)",
    "d_model": "hybrid model width",
    "heads": "attention heads (hybrid)",
    "dropout": "dropout (hybrid)",
    "input_rank": "hybrid: project each stream's features through this many dimensions first "
                  "(a narrow input for wide features whose cue is a small subspace; 0 = full)",
    "input_dropout": "hybrid: share of input features dropped whole per clip while training",
    "center": "hybrid: the temporal branches read each clip's deviation from its own mean (with "
              "--norm speaker: clip-level offsets removed there, kept for --stats-head)",
    "sync_head": "hybrid: a synchrony head: the streams' traces along class directions fitted "
                 "before training, correlated over each clip, to the logits at a weight chosen "
                 "on validation (trainer.synchrony); with both streams and --fusion cross",
    "sync_pcs": "hybrid: the synchrony head also reads this many principal directions of each "
                "stream's variation within clips (where brief events show, whatever class)",
    "stats_head": "hybrid: each input feature's per-clip mean and deviation straight to the "
                  "logits, learned with the rest (not the default; see --linear-head)",
    "linear_head": "hybrid: a logistic regression on each input feature's per-clip mean, deviation "
                   "and maximum, fitted after training and mixed into the output at a weight "
                   "chosen on validation log-loss (trainer.linear_head)",
    "mixup": "training: mixup inside each batch, lam ~ Beta(MIXUP, MIXUP) (0 = off)",
    "ema": "training: validation, best.pt and the test read an exponential moving average of "
           "the weights with this decay per step, e.g. 0.99 (trainer.averaging; 0 = off)",
    "ensemble": "train this many whole runs, seeds SEED to SEED+N-1, in OUT/members/, and read "
                "the mean of their probabilities (N times the compute; 1 = one model)",
    "noise": "training: std of Gaussian noise added to the standardised input features",
    "select": "early stopping and best.pt by validation macro_f1 or loss",
    "fusion": "hybrid: cross (cross-modal attention over time) or late (pooled streams "
              "concatenated, no synchrony head: the ablation)",
    "time_scale_min": "hybrid: seconds, the sharpest cross-modal head's time scale",
    "time_scale_max": "hybrid: seconds, the broadest cross-modal head's time scale",
    "audio_rate": "hybrid: audio frames per second the stream is pooled to, from its timestamps "
                  "(0 = as stored)",
    "video_rate": "hybrid: video frames per second the stream is pooled to (0 = as stored)",
    "norm": "standardisation: speaker (each speaker's own clips), clip, or none",
    "time_mask": "training: up to 2 time masks per stream of up to this many seconds (0 = off)",
    "feature_mask": "training: up to 2 feature masks per stream of up to this share of features",
    "audio_fps": "audio frames per second, used only for clips without timestamps",
    "threads": "torch threads (0 = all cores)",
    "resume": "continue the run in --out from checkpoints/last.pt",
    "cache_dir": "local cache for s3:// data (default ~/.cache/av-emotion)",
    "media": "raw media (folder or s3:// prefix) to extract into --data first; a rerun skips "
             "clips already there, and data whose extract.json names these media is reused",
    "extract_args": "extract flags for --media, e.g. '--video opencv --workers 2'",
}



def add_train_flags(p: argparse.ArgumentParser) -> None:
    d = defaults()
    p.add_argument("--config", metavar="FILE", help="YAML or JSON settings; flags override it "
                   "(default: none)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = d[f.name]
        shown = default if default != "" else "none"
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{HELP[f.name]} (default: {default})")
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        p.add_argument(flag, type=kind, default=None, choices=CHOICES.get(f.name),
                       metavar=None if f.name in CHOICES else f.name.upper().split("_")[0],
                       help=f"{HELP[f.name]} (default: {shown})")


def check_train_args(argv: list[str]):
    """Check ``trainer train`` flags here, before a deploy sends them to an instance.

    The same parsing and validation as ``train`` (flag names, value types, ranges, a ``--config``
    file, which must exist here), without loading data: ``--data`` and ``--out`` may be absent
    or name places that do not exist here. Nothing is read but the config file. Returns the
    resolved TrainConfig (deploy reads its ``extract_args``).

    Raises:
        ValueError: one line naming the first bad flag or value.

    Example:
        >>> check_train_args(["--epochs", "30", "--model", "lstm"]).epochs     # fine
        30
        >>> check_train_args(["--epocs", "30"])
        Traceback (most recent call last):
        ValueError: training args: unrecognized arguments: --epocs 30
    """
    p = RaisingParser("training args", prog="trainer train")
    add_train_flags(p)
    args = p.parse_args([str(a) for a in argv])
    try:
        return resolve(args.config,
                       **{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    except ValueError as e:
        raise ValueError(f"training args: {e}") from None
