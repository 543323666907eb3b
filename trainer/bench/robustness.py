"""The robustness suite: every variant on every data profile, over seeds, with 12 held-out
speakers per run (DESIGN.md section 9).

    python -m trainer.bench.robustness --out runs/robustness
    python -m trainer.bench.robustness --out runs/robustness --profiles base,small-cue --seeds 0,1 \
        --variants hybrid,late,linear --threads 1 --parallel 2
    python -m trainer.bench.robustness --out /tmp/rq --profiles base --quick   # a test-sized run

Each seed makes each profile's data set anew (``OUT/data/PROFILE-seed-S/``, its own speakers,
cue patterns and held-out split, from that seed), so the spread over seeds holds the data's
noise as well as training's: a default that wins only on a lucky draw of speakers shows. Each
variant is an ordinary ``python -m trainer train`` run in its own process
(``OUT/PROFILE/VARIANT-seed-S/``), except ``linear`` (trainer.bench.linear), which runs in
this process. A finished run is read, not repeated; an interrupted one continues with
``--resume``. Flags this runner does not know go to every training run.

Writes ``OUT/robustness.json`` and ``OUT/robustness.md`` after every finished run: per profile
and variant, the mean and standard deviation over seeds of test macro-F1 and of three grouped
figures read from the test confusion matrix (0.5 is chance for each): *audio cue* and *video
cue* (does the predicted class have the true class's audio, or video, cue kind) and *timing*
(ANG against DIS and FEA against HAP, among clips of those classes predicted as one of their
pair); and per variant the worst case and the median over profiles.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from trainer.bench.linear import linear_baseline
from trainer.bench.profiles import DONE, PROFILES, ceiling, generate, is_made, quick
from trainer.data import LABELS
from trainer.demo import cues
from trainer.store.files import atomic_write_text

# name: (description, train flags); None: the in-process linear baseline
VARIANTS = {
    "hybrid": ("hybrid at its defaults", []),
    "clip": ("hybrid `--norm clip` (the default until the suite chose `speaker`)",
             ["--norm", "clip"]),
    "nosync": ("hybrid `--no-sync-head` (the default until the suite chose the head)",
               ["--no-sync-head"]),
    "pcs0": ("hybrid `--sync-pcs 0` (the synchrony head on class directions alone)",
             ["--sync-pcs", "0"]),
    "ens3": ("hybrid `--ensemble 3` (three whole runs, their mean probability; 3x the compute)",
             ["--ensemble", "3"]),
    "late": ("hybrid `--fusion late`", ["--fusion", "late"]),
    "audio": ("hybrid, audio only", ["--modality", "audio"]),
    "video": ("hybrid, video only", ["--modality", "video"]),
    "lstm": ("lstm baseline", ["--model", "lstm"]),
    "linear": ("pooled linear baseline", None),
}
QUICK_FLAGS = ["--d-model", "32", "--heads", "2", "--batch-size", "16"]
FIGURES = ("macro_f1", "audio_cue", "video_cue", "timing")
PAIRS = (("ANG", "DIS"), ("FEA", "HAP"))


def grouped(cm: list[list[int]]) -> dict:
    """The audio-cue, video-cue and timing figures of a confusion matrix (0.5 is chance)."""
    cm = np.asarray(cm)
    out = {}
    for name, s in (("audio_cue", 0), ("video_cue", 1)):
        kind = np.array([cues(i)[s] for i in range(len(LABELS))])
        same = kind[:, None] == kind[None, :]
        out[name] = float(cm[same].sum() / max(cm.sum(), 1))
    idx = [[LABELS.index(a) for a in pair] for pair in PAIRS]
    right = sum(cm[i, i] for pair in idx for i in pair)
    within = sum(cm[np.ix_(pair, pair)].sum() for pair in idx)
    out["timing"] = float(right / within) if within else float("nan")
    return out


def curve(run: Path) -> list[dict]:
    """Per epoch: train loss, validation loss and macro-F1 (memorisation shows here)."""
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.exists() else []
    return [{k: r[k] for k in ("epoch", "train_loss", "val_loss", "val_macro_f1")} for r in rows]


def record(run: Path, summary: dict) -> dict:
    """One run's figures from its summary.json (or the linear baseline's summary)."""
    test = summary["test"]
    r = {k: test[k] for k in ("macro_f1", "accuracy", "uar")}
    r.update(grouped(test["confusion_matrix"]))
    r["test_speakers"] = len(summary["data"]["test"]["speakers"])
    if "members" in summary:  # --ensemble: each member's own best epoch, and test figure
        r.update(epochs=[m["epochs"] for m in summary["members"]],
                 best_epoch=[m["best_epoch"] for m in summary["members"]],
                 member_macro_f1=[m["test_macro_f1"] for m in summary["members"]],
                 seconds=summary["timings"]["total_seconds"])
    elif "epochs" in summary:
        r.update(epochs=summary["epochs"], best_epoch=summary["validation"]["best_epoch"],
                 seconds=summary["timings"]["total_seconds"], curve=curve(run))
        if summary.get("linear_head"):  # the linear head's weight, chosen on validation
            r["linear_mix"] = summary["linear_head"]["mix"]
    else:
        r.update(chosen={k: summary["validation"][k] for k in ("norm", "l2")},
                 train_macro_f1=summary["train"]["macro_f1"])
    return r


def train_run(data: Path, run: Path, flags: list[str]) -> dict:
    """A training run's summary.json, training (or resuming) it first if needed."""
    summary = run / "summary.json"
    if not summary.exists():
        if (run / "checkpoints" / "last.pt").exists():  # an interrupted run: continue it
            flags = flags + ["--resume"]
        run.parent.mkdir(parents=True, exist_ok=True)
        log = run.with_suffix(".console.txt")
        with open(log, "a") as f:  # a resumed run keeps the console of its first part
            proc = subprocess.run([sys.executable, "-m", "trainer", "train", "--data", str(data),
                                   "--out", str(run), *flags], stdout=f, stderr=subprocess.STDOUT,
                                  check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{run} failed (exit {proc.returncode}); see {log}")
    return json.loads(summary.read_text())


def linear_run(data: Path, run: Path, threads: int) -> dict:
    summary = run / "summary.json"
    if not summary.exists():
        doc = linear_baseline(str(data), threads=threads)
        atomic_write_text(summary, json.dumps(doc, indent=1) + "\n")
    return json.loads(summary.read_text())


def stats(values: list[float]) -> dict:
    v = [x for x in values if not math.isnan(x)]  # nan: no clip predicted within a pair
    return {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v)) if v else None}


def summarise(runs: dict, profiles: list[str], variants: list[str], n_seeds: int) -> dict:
    """Mean and spread per profile and variant; worst case and median per variant."""
    table = {}
    for p in profiles:
        table[p] = {}
        for v in variants:
            rs = [r for r in runs.get((p, v), {}).values() if "error" not in r]
            if rs:
                table[p][v] = {"seeds": len(rs), "short": len(rs) < n_seeds,
                               **{k: stats([r[k] for r in rs]) for k in FIGURES}}
    overall = {}
    for v in variants:
        means = {p: table[p][v]["macro_f1"]["mean"] for p in profiles if v in table[p]}
        if means:
            worst = min(means, key=means.get)
            overall[v] = {"worst": {"profile": worst, "macro_f1": means[worst]},
                          "median": float(np.median(list(means.values()))),
                          "profiles": len(means)}
    return {"profiles": table, "variants": overall}


def fmt(cell: dict | None, key: str = "macro_f1") -> str:
    """``mean ± std``, and how many seeds when they are fewer than the suite's."""
    s = (cell or {}).get(key)
    if not s or s["mean"] is None:
        return ""
    few = f" ({cell['seeds']} seed{'s' * (cell['seeds'] > 1)})" if cell.get("short") else ""
    return f"{s['mean']:.3f} ± {s['std']:.3f}{few}"


def markdown(doc: dict) -> str:
    profiles, variants = doc["profiles"], doc["variants"]
    table = doc["summary"]["profiles"]
    head = "| profile | " + " | ".join(variants) + " |"
    rule = "|---" * (len(variants) + 1) + "|"
    lines = ["## Test macro-F1 on held-out speakers (mean ± std over seeds)", "", head, rule]
    for p in profiles:
        cells = [fmt(table[p].get(v)) for v in variants]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    overall = doc["summary"]["variants"]
    lines.append("| **worst** | " + " | ".join(
        f"{overall[v]['worst']['macro_f1']:.3f} ({overall[v]['worst']['profile']})"
        if v in overall else "" for v in variants) + " |")
    lines.append("| **median** | " + " | ".join(
        f"{overall[v]['median']:.3f}" if v in overall else "" for v in variants) + " |")
    lines += ["", "## Audio cue / video cue / timing pairs (means; 0.5 is chance)", "", head, rule]
    for p in profiles:
        cells = []
        for v in variants:
            t = table[p].get(v)
            cells.append(" / ".join(f"{t[k]['mean']:.2f}" if t[k]["mean"] is not None else "-"
                                    for k in FIGURES[1:]) if t else "")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines += ["", "## Profiles", "", "What each holds, and how often a matched filter that knows "
              "the cue tells each stream's cue kind and the timing pairs apart (audio / video "
              "/ timing; the most any model can hope for on the grouped figures), and the "
              "macro-F1 of its own call of the six classes:", ""]
    for p in profiles:
        c = doc.get("ceiling", {}).get(p)
        lines.append(f"- `{p}`: {PROFILES[p].about}" +
                     (f" (matched filter {' / '.join(f'{x:.2f}' for x in c)})" if c else ""))
    flags = " ".join(doc["extra_flags"]) or "none"
    lines += ["", f"Seeds {', '.join(map(str, doc['seeds']))}; extra train flags: {flags}."]
    if doc["errors"]:
        lines += ["", "Failed runs:"] + [f"- {e}" for e in doc["errors"]]
    return "\n".join(lines) + "\n"


def write(out: Path, doc: dict) -> None:
    atomic_write_text(out / "robustness.json", json.dumps(doc, indent=1) + "\n")
    atomic_write_text(out / "robustness.md", markdown(doc))


def suite(out: str | Path, profiles: list[str], seeds: list[int], variants: list[str],
          parallel: int = 1, is_quick: bool = False, extra: list[str] = (),
          table_only: bool = False, threads: int = 1) -> dict:
    """Run (or read) every profile x variant x seed; returns the document it writes.
    ``table_only``: read the finished runs, train nothing."""
    out = Path(out)
    extra = list(extra)
    data_locks = {(p, s): threading.Lock() for p in profiles for s in seeds}

    def data(p: str, seed: int) -> Path:
        path = out / "data" / f"{p}-seed-{seed}"
        with data_locks[(p, seed)]:  # made once, by whichever run needs it first
            prof = quick(PROFILES[p]) if is_quick else PROFILES[p]
            if (path / DONE).exists() and not is_made(prof, path, seed):
                for run in (out / p).glob(f"*-seed-{seed}"):  # trained on the old data set
                    shutil.rmtree(run) if run.is_dir() else run.unlink()
            generate(prof, path, seed)
        return path

    def job(p: str, v: str, seed: int) -> dict:
        t0 = time.time()
        run = out / p / f"{v}-seed-{seed}"
        flags = VARIANTS[v][1]
        summary = linear_run(data(p, seed), run, threads) if flags is None else \
            train_run(data(p, seed), run, flags + ["--seed", str(seed)] + extra)
        return dict(record(run, summary), wall_seconds=round(time.time() - t0, 1))

    runs: dict = {}
    ceilings = {p: ceiling(quick(PROFILES[p]) if is_quick else PROFILES[p])
                for p in profiles if PROFILES[p].generator == "profile"}
    doc = {"profiles": profiles, "ceiling": ceilings, "variants": variants, "seeds": seeds,
           "extra_flags": extra, "quick": is_quick, "errors": [], "runs": {},
           "summary": summarise({}, profiles, variants, len(seeds))}
    # seed-major order: a suite stopped early still has every profile at its first seeds
    jobs = [(p, v, s) for s in seeds for p in profiles for v in variants
            if not table_only or (out / p / f"{v}-seed-{s}" / "summary.json").exists()]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(job, *j): j for j in jobs}
        for fut in as_completed(futures):
            p, v, s = futures[fut]
            try:
                r = fut.result()
            except Exception as e:  # one failed run must not lose the others
                r = {"error": f"{type(e).__name__}: {e}"[:300]}
                doc["errors"].append(f"{p} {v} seed {s}: {r['error']}")
                print(f"{p:16s} {v:7s} seed {s}: FAILED {r['error']}", flush=True)
            else:
                print(f"{p:16s} {v:7s} seed {s}: macro-F1 {r['macro_f1']:.3f}, timing "
                      f"{r['timing']:.2f}, audio {r['audio_cue']:.2f}, video {r['video_cue']:.2f}"
                      + (f" ({r['epochs']} epochs, best {r['best_epoch']})" if "epochs" in r
                         else f" ({r['chosen']['norm']}, l2 {r['chosen']['l2']})")
                      + f", {r['wall_seconds']:.0f} s", flush=True)
            runs.setdefault((p, v), {})[s] = r
            doc["runs"] = {f"{p}/{v}": {str(k): x for k, x in sorted(rs.items())}
                           for (p, v), rs in sorted(runs.items())}
            doc["summary"] = summarise(runs, profiles, variants, len(seeds))
            write(out, doc)
    return doc


def parse_list(text: str, known, what: str, p: argparse.ArgumentParser) -> list[str]:
    names = [x for x in text.split(",") if x]
    unknown = [x for x in names if x not in known]
    if unknown:
        p.exit(2, f"error: unknown {what}(s) {', '.join(unknown)}; known: {', '.join(known)}\n")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.bench.robustness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for data, runs and the table")
    p.add_argument("--profiles", default=",".join(PROFILES),
                   help=f"comma-separated, from {', '.join(PROFILES)} (default: all)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated (default: 0,1,2)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run, also the linear baseline's (default: 1)")
    p.add_argument("--parallel", type=int, default=1, help="runs at once (default: 1)")
    p.add_argument("--epochs", type=int, default=None, help="train's --epochs (default: train's)")
    p.add_argument("--quick", action="store_true", help="test-sized data and models, 2 epochs "
                   "unless --epochs says otherwise")
    p.add_argument("--table-only", action="store_true",
                   help="write the table from the finished runs; train nothing")
    args, extra = p.parse_known_args(argv)  # anything else goes to every training run
    profiles = parse_list(args.profiles, PROFILES, "profile", p)
    variants = parse_list(args.variants, VARIANTS, "variant", p)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        p.exit(2, f"error: --seeds must be comma-separated integers, not {args.seeds!r}\n")
    if args.parallel < 1 or args.threads < 1:
        p.exit(2, "error: --parallel and --threads must be at least 1\n")
    epochs = args.epochs or (2 if args.quick else None)
    extra = ["--threads", str(args.threads)] + (["--epochs", str(epochs)] if epochs else []) \
        + (QUICK_FLAGS if args.quick else []) + extra
    doc = suite(args.out, profiles, seeds, variants, args.parallel, args.quick, extra,
                args.table_only, args.threads)
    print(markdown(doc), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
