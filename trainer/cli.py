"""Command line: ``python -m trainer VERB`` (or the ``trainer`` console script).

Examples:
    python -m trainer demo-data --out demo-data
    python -m trainer train --data demo-data --out runs/demo
    python -m trainer train --data demo-data --out runs/lstm --model lstm --epochs 20
    python -m trainer train --data s3://my-bucket/data/ --out s3://my-bucket/runs/r1/ --resume
    python -m trainer evaluate --checkpoint runs/demo/checkpoints/best.pt --data held-out/
    python -m trainer predict --checkpoint runs/demo/checkpoints/best.pt clip.npz

Bad input ends with one line on stderr and exit code 1 (2 for a wrong flag); a run stopped by
SIGTERM or Ctrl-C saves its checkpoint and exits 143 or 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

from trainer.config import CHOICES, TrainConfig, defaults

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
    "fusion": "hybrid: cross (cross-modal attention over time) or late (pooled streams "
              "concatenated: the ablation)",
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


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of usage plus error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_train_flags(p: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = Parser(prog="trainer", description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=Parser)

    p = sub.add_parser("train", help="train a model on clip feature files", formatter_class=fmt,
                       description="Train, validate on held-out speakers, test; writes the run "
                       "directory.\n\nExamples:\n  python -m trainer train --data demo-data --out "
                       "runs/demo\n  python -m trainer train --data d/ --out runs/x --resume")
    _add_train_flags(p)

    p = sub.add_parser("evaluate", help="metrics of a trained model on other clips",
                       formatter_class=fmt, description="Examples:\n  python -m trainer evaluate "
                       "--checkpoint runs/demo/checkpoints/best.pt --data held-out/")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pt checkpoint")
    p.add_argument("--data", required=True, metavar="PATH", help="folder or manifest CSV")
    p.add_argument("--out", metavar="FILE", help="also write the metrics as JSON here "
                   "(default: print only)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per batch (default: 32)")

    p = sub.add_parser("predict", help="class probabilities per clip", formatter_class=fmt,
                       description="Prints one JSON line per clip.\n\nExamples:\n  python -m "
                       "trainer predict --checkpoint runs/demo/checkpoints/best.pt a.npz b.npz")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pt checkpoint")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="clip files or folders of them")

    p = sub.add_parser("demo-data", help="write the built-in demo data set", formatter_class=fmt,
                       description="Synthetic clips in the real clip format: some classes "
                       "need the audio, some the video, and some the timing between the two "
                       "(README: the demo data).\n\nExamples:\n  python -m trainer demo-data "
                       "--out demo-data\n  python -m trainer demo-data --out demo-512 "
                       "--audio-fps 100 --audio-dim 89 --video-fps 15 --video-dim 512")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--speakers", type=int, default=36, help="speakers (default: 36)")
    p.add_argument("--clips-per-speaker", type=int, default=24, help="(default: 24)")
    # The defaults are trainer.demo.Shape's (not imported here: it loads numpy and torch).
    for f, kind, default in (("audio_fps", float, 50.0), ("audio_dim", int, 40),
                             ("video_fps", float, 30.0), ("video_dim", int, 64)):
        p.add_argument("--" + f.replace("_", "-"), type=kind, default=default,
                       help=f"{'frames per second' if 'fps' in f else 'features per frame'} "
                       f"(default: {default})")

    p = sub.add_parser("bench", help="measure speed and memory: hybrid against the lstm",
                       formatter_class=fmt, description="Training throughput, peak memory, FLOP "
                       "rate, padding, data-path overhead and inference latency on a synthetic "
                       "CREMA-D-shaped workload; prints a table and writes JSON.\n\nExamples:\n"
                       "  python -m trainer bench --quick\n  python -m trainer bench --out "
                       "bench.json")
    p.add_argument("--out", default="bench.json", metavar="FILE", help="JSON report "
                   "(default: bench.json)")
    p.add_argument("--quick", action="store_true", help="small workload, under a minute, for CI "
                   "(default: off: the full mode the README quotes)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: tiny shapes
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: 0 = all cores)")
    p.add_argument("--seed", type=int, default=0, help="workload seed (default: 0)")

    p = sub.add_parser("export", help="export a trained model (TorchScript or ONNX)",
                       formatter_class=fmt, description="Inputs: audio, audio_mask, audio_t, "
                       "video, video_mask, video_t (variable batch and lengths), features as "
                       "stored; output: class probabilities. A FILE.json sidecar names the labels."
                       "\n\nExamples:\n  python -m trainer export --checkpoint runs/demo/"
                       "checkpoints/best.pt --format onnx\n  python -m trainer export --checkpoint "
                       "best.pt --format torchscript --out model.ts")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pt checkpoint")
    p.add_argument("--format", default="onnx", choices=("torchscript", "onnx"),
                   help="artifact format (default: onnx)")
    p.add_argument("--out", metavar="FILE", help="artifact path (default: the checkpoint's "
                   "path with .onnx or .ts)")

    # Operator verbs (deploy, status, logs, monitor, results, destroy): that module imports only
    # argparse; boto3, docker and pulumi load when one of those verbs runs, never for `train`.
    from trainer.ops.cli import add_ops_commands

    add_ops_commands(sub, COMMANDS)
    from trainer.cv import add_cv_command  # stdlib-only at import, like the ops verbs

    add_cv_command(sub, COMMANDS)
    from trainer.extract.cli import add_extract_command  # argparse only at import, like cv's
    add_extract_command(sub, COMMANDS)
    return parser


class _CheckParser(Parser):
    """The train flags' parser for ``check_train_args``: a bad flag raises instead of exiting."""

    def error(self, message):
        raise ValueError(f"training args: {message}")


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
    from trainer.config import resolve

    p = _CheckParser(prog="trainer train", add_help=False)
    _add_train_flags(p)
    args = p.parse_args([str(a) for a in argv])
    try:
        return resolve(args.config,
                       **{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    except ValueError as e:
        raise ValueError(f"training args: {e}") from None


def cmd_train(args) -> int:
    from trainer.config import resolve
    from trainer.train import train

    flags = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    cfg = resolve(args.config, **flags)
    if not cfg.data or not cfg.out:
        raise ValueError("train needs --data and --out")
    summary = train(cfg)
    t = summary["test"]
    print(f"test macro-F1 {t['macro_f1']:.3f}  accuracy {t['accuracy']:.3f}  UAR {t['uar']:.3f}  "
          f"({summary['data']['test']['clips']} clips of {len(summary['data']['test']['speakers'])}"
          f" held-out speakers)")
    print(f"results: {cfg.out}  (summary.json, metrics.jsonl, plots/, checkpoints/best.pt)")
    return 0


def cmd_evaluate(args) -> int:
    from trainer.evaluate import evaluate
    from trainer.storage import atomic_write_text

    report = evaluate(args.checkpoint, args.data, args.batch_size)
    text = json.dumps(report, indent=2)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    brief = {k: round(report[k], 6) for k in ("accuracy", "macro_f1", "uar")}
    print(json.dumps(dict(brief, clips=report["data"]["clips"],
                          skipped=len(report["data"]["skipped"]))))
    return 0


def cmd_predict(args) -> int:
    from trainer.evaluate import predict

    results = predict(args.checkpoint, args.inputs)
    for r in results:
        print(json.dumps(r))
    return 0 if any("label" in r for r in results) else 1


def cmd_demo_data(args) -> int:
    from trainer.demo import make_demo_data

    from trainer.demo import Shape

    for name in ("speakers", "clips_per_speaker", "audio_fps", "audio_dim", "video_fps",
                 "video_dim"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.speakers < 3:
        raise ValueError("--speakers must be at least 3 (train, validation and test speakers)")
    shape = Shape(args.audio_fps, args.audio_dim, args.video_fps, args.video_dim)
    info = make_demo_data(args.out, args.seed, args.speakers, args.clips_per_speaker, shape)
    print(f"demo data: {info['clips']} clips, {info['excluded']} RAVDESS calm/surprised, "
          f"{info['broken']} broken files in {info['path']}")
    return 0


def cmd_bench(args) -> int:
    from trainer.bench import main as bench

    bench("smoke" if args.smoke else "quick" if args.quick else "full", args.out, args.seed,
          args.threads)
    return 0


def cmd_export(args) -> int:
    from trainer.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.format, args.out)
    print(f"exported: {out}  (inputs and labels: {out}.json)")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "demo-data": cmd_demo_data, "bench": cmd_bench, "export": cmd_export}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: reported in one line, never as a traceback."""
    from trainer.errors import CheckpointError, DataError, MediaError

    errors: list[type[BaseException]] = [DataError, CheckpointError, MediaError, ValueError,
                                         FileNotFoundError, PermissionError, IsADirectoryError]
    s3 = sys.modules.get("trainer.s3")  # only a verb that loaded it can have raised its error
    if s3 is not None:
        errors.append(s3.S3Error)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trainer.errors import Stopped

    try:
        return COMMANDS[args.verb](args)
    except Stopped as e:
        print(f"stopped: {e.advice} (exit {e.code})", file=sys.stderr)
        return e.code
    except _user_errors() as e:
        if os.environ.get("TRAINER_DEBUG"):
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
