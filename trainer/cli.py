"""Command line: ``python -m trainer VERB`` (or the ``trainer`` console script).

Examples:
    python -m trainer demo-data --out demo-data
    python -m trainer train --data demo-data --out runs/demo
    python -m trainer train --data demo-data --out runs/lstm --model lstm --epochs 20
    python -m trainer train --data s3://my-bucket/data/ --out s3://my-bucket/runs/r1/ --resume
    python -m trainer evaluate --checkpoint runs/demo/checkpoints/best.pt --data held-out/
    python -m trainer predict --checkpoint runs/demo/checkpoints/best.pt clip.npz
    python -m trainer enroll --checkpoint runs/demo/checkpoints/best.pt --out speakers.npz new/

Bad input ends with one line on stderr and exit code 1 (2 for a wrong flag); a run stopped by
SIGTERM or Ctrl-C saves its checkpoint and exits 143 or 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

from trainer.config import TrainConfig, resolve
from trainer.cv.cli import add_cv_command
from trainer.demo import Shape, make_demo_data
from trainer.errors import CheckpointError, DataError, MediaError, Parser, Stopped
from trainer.extract.cli import add_extract_command
from trainer.flags import add_train_flags
from trainer.ops.cli import add_ops_commands, add_tensorboard_command
from trainer.store.files import atomic_write_text

# The verbs that need torch import their modules when they run (the lines marked "torch"):
# `status`, `logs` and the other operator verbs then start in a fraction of a second, not three.

def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = Parser(prog="trainer", description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=Parser)

    p = sub.add_parser("train", help="train a model on clip feature files", formatter_class=fmt,
                       description="Train, validate on held-out speakers, test; writes the run "
                       "directory.\n\nExamples:\n  python -m trainer train --data demo-data --out "
                       "runs/demo\n  python -m trainer train --data d/ --out runs/x --resume")
    add_train_flags(p)

    p = sub.add_parser("evaluate", help="metrics of a trained model on other clips",
                       formatter_class=fmt, description="Examples:\n  python -m trainer evaluate "
                       "--checkpoint runs/demo/checkpoints/best.pt --data held-out/")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pt checkpoint")
    p.add_argument("--data", required=True, metavar="PATH", help="folder or manifest CSV")
    p.add_argument("--out", metavar="FILE", help="also write the metrics as JSON here, and a "
                   "row per clip to FILE's stem + .predictions.csv (default: print only)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per batch (default: 32)")

    p = sub.add_parser("predict", help="class probabilities per clip", formatter_class=fmt,
                       description="Prints one JSON line per clip. A model trained with --norm "
                       "speaker takes each speaker's statistics from --enroll, else from the "
                       "speaker's other clips given here, else its measured fallback (with one "
                       "warning).\n\nExamples:\n  python -m trainer predict --checkpoint "
                       "runs/demo/checkpoints/best.pt a.npz b.npz\n  python -m trainer predict "
                       "--checkpoint best.pt --enroll speakers.npz clip.npz")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pt checkpoint")
    p.add_argument("--enroll", action="append", metavar="PATH", help="an enrolment file "
                   "(trainer enroll), or clips, folders or media to enrol their speakers from; "
                   "repeat for more (default: none)")
    p.add_argument("--speaker", metavar="NAME", help="the speaker of every input and --enroll "
                   "clip (default: from the file names)")
    p.add_argument("--audio-model", metavar="DIR", help="raw media of a model trained on "
                   "speech encoder features: the encoder's folder (default: where extract "
                   "found it; its weights must be the same)")
    p.add_argument("--face-model", metavar="FILE", help="raw media of a model trained on "
                   "--video hsemotion features: the ONNX file (default: where extract found it;"
                   " the same weights)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="clip files (.npz), raw media "
                   "clips (any video extract takes), or folders of either")

    p = sub.add_parser("enroll", help="speakers' statistics for a --norm speaker model",
                       formatter_class=fmt, description="Each speaker's running sums of their "
                       "clips, pooled as the checkpoint pools, for predict --enroll.\n\n"
                       "Examples:\n  python -m trainer enroll --checkpoint runs/demo/checkpoints/"
                       "best.pt --out speakers.npz new-speaker/\n  python -m trainer enroll "
                       "--checkpoint best.pt --out alice.npz --speaker alice a.mp4 b.mp4")
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a .pt checkpoint")
    p.add_argument("--out", required=True, metavar="FILE", help="the enrolment file (.npz)")
    p.add_argument("--speaker", metavar="NAME", help="the speaker of every input (default: "
                   "from the file names)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="clip files (.npz), raw media "
                   "clips (any video extract takes), or folders of either")

    p = sub.add_parser("demo-data", help="write the built-in demo data set", formatter_class=fmt,
                       description="Synthetic clips in the real clip format: some classes "
                       "need the audio, some the video, and some the timing between the two "
                       "(docs/data.md: the demo data).\n\nExamples:\n  python -m trainer demo-data "
                       "--out demo-data\n  python -m trainer demo-data --out demo-512 "
                       "--audio-fps 100 --audio-dim 89 --video-fps 15 --video-dim 512")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--speakers", type=int, default=36, help="speakers (default: 36)")
    p.add_argument("--clips-per-speaker", type=int, default=24, help="(default: 24)")
    for f, kind in (("audio_fps", float), ("audio_dim", int), ("video_fps", float),
                    ("video_dim", int)):
        default = getattr(Shape(), f)
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
    p.add_argument("--quick", action="store_true", help="small workload, about a minute, for CI "
                   "(default: off: the full mode docs/performance.md quotes)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tests: tiny shapes
    p.add_argument("--instructions", action="store_true", help="also count instructions per "
                   "training step under valgrind's callgrind (slow: minutes; default: off)")
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

    # Operator verbs (deploy, status, logs, monitor, results, destroy): boto3, docker and pulumi
    # load when one of those verbs runs, never for `train`.
    add_ops_commands(sub, COMMANDS)
    add_tensorboard_command(sub, COMMANDS)
    add_cv_command(sub, COMMANDS)
    add_extract_command(sub, COMMANDS)
    return parser


def cmd_train(args) -> int:
    from trainer.train import train  # torch

    flags = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    cfg = resolve(args.config, **flags)
    if not cfg.data or not cfg.out:
        raise ValueError("train needs --data and --out")
    summary = train(cfg)
    t = summary["test"]
    print(f"test macro-F1 {t['macro_f1']:.3f}  accuracy {t['accuracy']:.3f}  UAR {t['uar']:.3f}  "
          f"({summary['data']['test']['clips']} clips of {len(summary['data']['test']['speakers'])}"
          f" held-out speakers)")
    each = "members/*/ (each member's run)" if cfg.ensemble > 1 else "metrics.jsonl"
    print(f"results: {cfg.out}  (summary.json, {each}, plots/, checkpoints/best.pt)")
    return 0


def cmd_evaluate(args) -> int:
    from trainer.evaluate import evaluate, predictions_csv, predictions_path  # torch

    report = evaluate(args.checkpoint, args.data, args.batch_size)
    rows = report.pop("predictions")
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
        atomic_write_text(predictions_path(args.out), predictions_csv(rows))
    brief = {k: round(report[k], 6) for k in ("accuracy", "macro_f1", "uar")}
    print(json.dumps(dict(brief, clips=report["data"]["clips"],
                          skipped=len(report["data"]["skipped"]))))
    return 0


def cmd_predict(args) -> int:
    from trainer.predict import predict  # torch

    models = {"audio_model": args.audio_model, "face_model": args.face_model}
    results = predict(args.checkpoint, args.inputs, args.enroll, args.speaker, models=models)
    for r in results:
        print(json.dumps(r))
    return 0 if any("label" in r for r in results) else 1


def cmd_enroll(args) -> int:
    from trainer.enroll import enroll  # torch

    got = enroll(args.checkpoint, args.inputs, args.out, args.speaker)
    for s in got["skipped"]:
        print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
    clips = sum(got["speakers"].values())
    print(f"enrolled {len(got['speakers'])} speaker(s) from {clips} clip(s) into {got['out']}"
          + (f"; {len(got['skipped'])} input(s) skipped" if got["skipped"] else ""))
    if got["norm"] != "speaker":
        print(f"note: this model standardises with norm {got['norm']}, not by speaker: "
              "predict does not use these statistics", file=sys.stderr)
    return 0


def cmd_demo_data(args) -> int:
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
    from trainer.bench.run import main as bench  # torch

    bench("smoke" if args.smoke else "quick" if args.quick else "full", args.out, args.seed,
          args.threads, args.instructions)
    return 0


def cmd_export(args) -> int:
    from trainer.export import export_checkpoint  # torch

    out = export_checkpoint(args.checkpoint, args.format, args.out)
    print(f"exported: {out}  (inputs and labels: {out}.json)")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "enroll": cmd_enroll,
            "demo-data": cmd_demo_data, "bench": cmd_bench, "export": cmd_export}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input: reported in one line, never as a traceback."""
    errors: list[type[BaseException]] = [DataError, CheckpointError, MediaError, ValueError,
                                         FileNotFoundError, PermissionError, IsADirectoryError]
    s3 = sys.modules.get("trainer.store.s3")  # only a verb that loaded it raised S3Error
    if s3 is not None:
        errors.append(s3.S3Error)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
