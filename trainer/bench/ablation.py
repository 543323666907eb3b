"""The demo ablation table (docs/training.md): the hybrid against its ablations and the lstm.

    python -m trainer.bench.ablation --data demo-data --out runs/ablation --seeds 0,1,2
    python -m trainer.bench.ablation --data demo-512 --out runs/ablation-512 --variants hybrid,late

Each variant and seed is one ordinary training run (``OUT/VARIANT-seed-S/``, its own process),
on held-out speakers; a run already finished is read, not repeated, so an interrupted table
continues where it stopped. Writes ``OUT/ablation.json`` (every run's test metrics, and mean and
standard deviation per variant) and ``OUT/ablation.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from trainer.bench.robustness import train_run

# name: (description, train flags)
VARIANTS = {
    "hybrid": ("hybrid, cross-modal attention (the defaults)", []),
    "late": ("hybrid `--fusion late` (no cross-modal attention)", ["--fusion", "late"]),
    "audio": ("hybrid, audio only (`--modality audio`)", ["--modality", "audio"]),
    "video": ("hybrid, video only (`--modality video`)", ["--modality", "video"]),
    "lstm": ("lstm baseline (`--model lstm`)", ["--model", "lstm"]),
}
METRICS = ("macro_f1", "accuracy", "uar")


def run_one(data: str, out: Path, flags: list[str]) -> dict:
    """One training run's test metrics (its summary.json), training it first if needed (the
    suite's ``train_run``: an interrupted run with a checkpoint is resumed)."""
    try:
        s = train_run(Path(data), out, flags)
    except RuntimeError as e:
        raise SystemExit(f"error: {e}") from None
    return {"epochs": s["epochs"], "best_epoch": s["validation"]["best_epoch"],
            **{k: s["test"][k] for k in METRICS},
            "test_speakers": len(s["data"]["test"]["speakers"])}


def table(results: dict) -> str:
    lines = ["| model | test macro-F1 | accuracy | UAR | runs |", "|---|---|---|---|---|"]
    for name, r in results.items():
        cells = [f"{r['summary'][k]['mean']:.3f} ± {r['summary'][k]['std']:.3f}" for k in METRICS]
        lines.append(f"| {VARIANTS[name][0]} | {' | '.join(cells)} | {len(r['runs'])} |")
    return "\n".join(lines) + "\n"


def ablation(data: str, out: str | Path, seeds: list[int], variants: list[str],
             extra: list[str]) -> dict:
    out = Path(out)
    results: dict = {}
    for name in variants:
        runs = []
        for seed in seeds:
            r = run_one(data, out / f"{name}-seed-{seed}",
                        VARIANTS[name][1] + ["--seed", str(seed)] + extra)
            runs.append(dict(r, seed=seed))
            print(f"{name:7s} seed {seed}: test macro-F1 {r['macro_f1']:.3f} "
                  f"({r['test_speakers']} held-out speakers, {r['epochs']} epochs)", flush=True)
        results[name] = {"runs": runs, "summary": {
            k: {"mean": float(np.mean([r[k] for r in runs])),
                "std": float(np.std([r[k] for r in runs]))} for k in METRICS}}
    doc = {"data": data, "seeds": seeds, "extra_flags": extra, "variants": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "ablation.md").write_text(table(results))
    print(table(results), end="")
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.bench.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="clip feature files")
    p.add_argument("--out", required=True, help="folder for the runs and the table")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated (default: 0,1,2)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    args, extra = p.parse_known_args(argv)  # anything else goes to every train run
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.exit(2, f"error: unknown variant(s) {', '.join(sorted(unknown))}\n")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        p.exit(2, f"error: --seeds must be comma-separated integers, not {args.seeds!r}\n")
    ablation(args.data, args.out, seeds, variants, extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
