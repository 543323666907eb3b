"""The aggregate of a cross-validation run: ``cv.json``, ``cv.md``, ``plots/cv_folds.png`` and
``predictions.csv`` (every fold's test clips, one row each, with the fold's number).

    python -m trainer cv --out runs/cv --aggregate          # from the fold-*/ folders present
    >>> from trainer.cv import aggregate
    >>> aggregate("s3://my-bucket/runs/cv1/")["summary"]["macro_f1"]
    {'mean': 0.93, 'std': 0.021}

Reads every ``fold-*/summary.json`` (and ``fold-*/cv-task.json``, the task's place in the plan,
and ``fold-*/predictions.csv``) under a local folder or an ``s3://`` prefix, so it works on a
run still going, on the folds a Batch array left in S3, and on a download of them
(``make results``). The standard deviation
is the sample one (n - 1): with 5 folds, the population one would understate the spread.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np

import structlog

from trainer.cv.plan import record_differences
from trainer.errors import DataError
from trainer.store.rundir import RunDir
from trainer.store.uri import is_s3, read_json, read_text

TASK_DIR = re.compile(r"fold-(\d+)(?:-seed-(\d+))?")
METRICS = ("accuracy", "macro_f1", "uar")
NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "uar": "UAR"}
# What marks a task directory as started: its record first, then a checkpoint, then the end.
MARKS = ("cv-task.json", "checkpoints/last.pt", "summary.json", "predictions.csv")

log = structlog.get_logger()


def task_files(out: str) -> dict[str, dict[str, str]]:
    """{task dir: {file name: uri}} for the cv-task.json, checkpoints/last.pt, summary.json and
    predictions.csv files under ``out`` (a folder or an s3:// prefix).

    Raises:
        S3Error: the bucket does not exist, access denied, S3 unreachable (one line).
    """
    found: dict[str, dict[str, str]] = {}
    if is_s3(out):
        from trainer.store import s3  # boto3: loaded only where S3 is used

        bucket, prefix = s3.parse_s3_uri(out)
        prefix = s3.as_folder(prefix)
        try:
            objects = s3.retry(lambda: s3.list_objects(s3.client(), bucket, prefix),
                               f"list {out}")
        except (s3.BotoCoreError, s3.ClientError) as e:
            raise s3.explain(e, out) from None
        for rel in objects:
            top, _, name = rel.partition("/")
            if TASK_DIR.fullmatch(top) and name in MARKS:
                found.setdefault(top, {})[name] = f"s3://{bucket}/{prefix}{rel}"
    else:
        for name in MARKS:
            for p in Path(out).glob(f"fold-*/{name}"):
                top = p.parents[len(Path(name).parts) - 1]
                if TASK_DIR.fullmatch(top.name):
                    found.setdefault(top.name, {})[name] = str(p)
    return found


def _plan_key(record: dict) -> str:
    """The plan a task record belongs to, as one comparable string (the data's URI aside)."""
    settings = {k: v for k, v in (record.get("settings") or {}).items() if k != "data"}
    return json.dumps(settings, sort_keys=True)


def _mean_std(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": round(float(v.mean()), 6),
            "std": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 6)}


def aggregate_dict(summaries: list[tuple[str, dict]], settings: dict | None = None) -> dict:
    """The cv.json dict from (task dir name, its summary.json) pairs.

    Args:
        summaries: e.g. ``[("fold-1", {...}), ("fold-2", {...})]``; any order.
        settings: the plan's settings (folds, seeds, tasks_total, train), when known.

    Example:
        >>> aggregate_dict([("fold-1", s1), ("fold-2", s2)])["summary"]["uar"]
        {'mean': 0.9, 'std': 0.05}
    """
    settings = dict(settings or {})
    rows = []
    for name, s in summaries:
        m = TASK_DIR.fullmatch(name)
        if m is None:
            raise ValueError(f"{name!r} is not a cv task directory (fold-K or fold-K-seed-S)")
        seeds = settings.get("seeds") or [None]
        seed = int(m.group(2)) if m.group(2) is not None else seeds[0]
        t = s["test"]
        rows.append({"fold": int(m.group(1)), "seed": seed, "dir": name,
                     "test_speakers": s["data"]["test"]["speakers"],
                     "test_clips": s["data"]["test"]["clips"],
                     "best_epoch": s.get("validation", {}).get("best_epoch"),
                     "test": {k: t[k] for k in (*METRICS, "per_class", "confusion_matrix")}})
    rows.sort(key=lambda r: (r["fold"], -1 if r["seed"] is None else r["seed"]))
    summary: dict = {}
    if rows:
        summary = {k: _mean_std([r["test"][k] for r in rows]) for k in METRICS}
        labels = list(rows[0]["test"]["per_class"])
        summary["per_class_f1"] = {y: round(float(np.mean([r["test"]["per_class"][y]["f1"]
                                                           for r in rows])), 6) for y in labels}
        summary["labels"] = labels
        summary["confusion_matrix"] = np.sum([r["test"]["confusion_matrix"] for r in rows],
                                             axis=0).tolist()
    summary["tasks_done"] = len(rows)
    if settings.get("tasks_total") is not None:
        summary["tasks_total"] = settings["tasks_total"]
    return {"folds": rows, "summary": summary, "settings": settings}


def markdown(cv: dict, title: str) -> str:
    """cv.md: the mean ± std table, then one row per task."""
    s, st = cv["summary"], cv["settings"]
    total = s.get("tasks_total", "?")
    lines = [f"# Cross-validation: {title}", "",
             f"{st.get('folds', '?')} folds × seeds {st.get('seeds', '?')}: "
             f"{s['tasks_done']} of {total} tasks done. Mean ± sample standard deviation "
             "over the tasks' test sets.", "",
             "| metric | mean ± std |", "|---|---|"]
    for k in METRICS:
        lines.append(f"| {NAMES[k]} | {s[k]['mean']:.3f} ± {s[k]['std']:.3f} |")
    lines += ["", "| fold | seed | test speakers | test clips | best epoch | accuracy | "
              "macro-F1 | UAR |", "|---|---|---|---|---|---|---|---|"]
    for r in cv["folds"]:
        t = r["test"]
        lines.append(f"| {r['fold']} | {r['seed']} | {', '.join(r['test_speakers'])} | "
                     f"{r['test_clips']} | {r['best_epoch']} | {t['accuracy']:.3f} | "
                     f"{t['macro_f1']:.3f} | {t['uar']:.3f} |")
    lines += ["", "Per-class F1, mean over tasks: " + ", ".join(
        f"{y} {f:.3f}" for y, f in s["per_class_f1"].items()), "",
              "Every test clip's prediction, with its fold: "
              "[predictions.csv](predictions.csv).", ""]
    return "\n".join(lines)


def plot(cv: dict) -> bytes:
    """Per-task accuracy, macro-F1 and UAR as grouped bars, with each mean as a dashed line."""
    from trainer.plots import plt, png_bytes  # matplotlib: loaded only to draw

    rows = cv["folds"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.8 * len(rows)), 3.8))
    for j, k in enumerate(METRICS):
        bars = ax.bar(x + (j - 1) * 0.27, [r["test"][k] for r in rows], 0.27, label=NAMES[k])
        ax.axhline(cv["summary"][k]["mean"], color=bars.patches[0].get_facecolor(),
                   linestyle="--", linewidth=1)
    ax.set(xticks=x, xticklabels=[r["dir"] for r in rows], ylim=(0, 1), ylabel="test",
           title="Per-fold test metrics (dashed: means)")
    ax.tick_params(axis="x", labelrotation=30 if len(rows) > 6 else 0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return png_bytes(fig)


def fold_predictions(parts: list[tuple[dict, str]]) -> str:
    """The tasks' ``predictions.csv`` as one CSV, each row led by its task's fold and seed.

    Args:
        parts: (a ``cv.json`` fold row, the text of that task's predictions.csv) pairs.
    """
    out = []
    for r, text in parts:
        rows = list(csv.reader(io.StringIO(text)))
        if not out and rows:
            out.append(["fold", "seed", *rows[0]])
        out += [[r["fold"], "" if r["seed"] is None else r["seed"], *row] for row in rows[1:]]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(out)
    return buf.getvalue()


def aggregate(out: str, plan: dict[str, dict] | None = None) -> dict:
    """Read the finished tasks under ``out`` and (re)write ``cv.json``, ``cv.md``,
    ``plots/cv_folds.png`` and ``predictions.csv`` (every task's test clips, with their fold
    and seed) there; returns the cv.json dict.

    Only tasks of one plan are aggregated: with ``plan`` ({task dir: its record,
    ``trainer.cv.plan.task_record``}), the tasks of that plan whose ``cv-task.json`` is that
    record; without (``cv --aggregate``), the tasks whose ``cv-task.json`` names one plan (or,
    where no folder has a record, every finished one). A ``fold-*`` folder of another plan is
    never counted.

    Raises:
        DataError: no finished task under ``out``; without ``plan``, tasks of two plans.
    """
    out = str(out)
    files = task_files(out)
    records = {d: read_json(f["cv-task.json"]) for d, f in sorted(files.items())
               if "summary.json" in f and "cv-task.json" in f}
    if plan is not None:
        done = [d for d, r in records.items() if d in plan and not record_differences(r, plan[d])]
        settings = next(iter(plan.values()))["settings"] if plan else {}
    else:
        plans = sorted({_plan_key(r) for r in records.values()})
        if len(plans) > 1:
            first = {p: [d for d, r in records.items() if _plan_key(r) == p] for p in plans}
            names = "; ".join(", ".join(ds[:3]) + (", ..." if len(ds) > 3 else "")
                              for ds in first.values())
            raise DataError(f"{out} holds finished tasks of {len(plans)} different cv plans "
                            f"({names}); aggregate each plan's folders in a folder of its own")
        # Folders without a record (plain train runs, older cv runs) are taken only when no
        # folder has one: beside recorded tasks, their plan is unknown.
        done = sorted(records) or sorted(d for d, f in files.items() if "summary.json" in f)
        settings = records[done[0]].get("settings", {}) if records else {}
    left_out = sorted(d for d, f in files.items() if "summary.json" in f and d not in done)
    if left_out:
        log.warning("cv_tasks_left_out", dirs=left_out, reason="not tasks of this plan (or no "
                    "cv-task.json)")
    if not done:
        raise DataError(f"no finished cv task (fold-*/summary.json) under {out}"
                        + (f" of this plan ({', '.join(left_out[:3])} are of another)"
                           if left_out else ""))
    cv = aggregate_dict([(d, read_json(files[d]["summary.json"])) for d in done], settings)
    run = RunDir(out)
    run.write_json("cv.json", cv)
    found = [(r, files[r["dir"]]["predictions.csv"]) for r in cv["folds"]
             if "predictions.csv" in files[r["dir"]]]
    if found:
        run.write_text("predictions.csv",
                       fold_predictions([(r, read_text(u)) for r, u in found]))
    run.write_text("cv.md", markdown(cv, out))
    run.write_bytes("plots/cv_folds.png", plot(cv))
    run.close()
    return cv
