"""``make results``: a run directory copied to results/RUN_ID/, with summary.md and plots.

    python -m trainer results                                # the newest run
    python -m trainer results --run 20250101-120000-ab12     # make results RUN=...

Idempotent: files already there with the object's content are kept, summary.md is rewritten.
On a run still going it writes what exists so far (status, metrics per epoch, learning curves)
and can be run again later.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer import plots
from trainer.cv import aggregate
from trainer.ops import pricing, runs, views
from trainer.store.files import atomic_write_bytes, atomic_write_text


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rows(path: Path) -> list[dict]:
    try:
        return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, ValueError):
        return []


def fetch(bucket: str, run_id: str, dest_root: Path, price: pricing.Price | None = None) -> Path:
    """Download the run into ``dest_root/RUN_ID``, draw missing plots, write summary.md."""

    dest = Path(dest_root) / run_id
    counts = runs.download(bucket, run_id, dest)
    st, summary = _read(dest / "status.json"), _read(dest / "summary.json")
    config, rows = _read(dest / "config.json"), _rows(dest / "metrics.jsonl")
    # The trainer draws its plots at the end; until then (or if they are missing) draw them here.
    if rows and (summary is None or not (dest / "plots/learning_curves.png").exists()):
        atomic_write_bytes(dest / "plots/learning_curves.png", plots.learning_curves(rows))
    text = summary_markdown(run_id, st, summary, rows, config, price)
    atomic_write_text(dest / "summary.md", text)
    print(f"results/{run_id}: {counts['downloaded']} file(s) downloaded, {counts['unchanged']} "
          f"unchanged; summary.md written")
    return dest


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def summary_markdown(run_id: str, st: dict | None, summary: dict | None, rows: list[dict],
                     config: dict | None, price: pricing.Price | None = None) -> str:
    """summary.md: key metrics, per-class table, confusion matrix, time and cost, data set."""
    st, config = st or {}, config or {}
    state = st.get("state", "unknown")
    out = [f"# Run {run_id}", ""]
    line = f"State: **{state}** (status updated {st.get('updated_at', '?')}), "
    if summary and summary.get("members"):  # --ensemble: its epochs are its members'
        line += f"{len(summary['members'])} members, each a run of its own"
    else:
        line += (f"epoch {st.get('epoch', 0)} of at most "
                 f"{st.get('epochs_max', config.get('epochs', '?'))}")
        if summary:
            line += ", stopped early" if summary.get("stopped_early") else ", ran to the epoch cap"
    out += [line + ".", ""]
    if config:
        out += [f"Model `{config.get('model')}`; data `{config.get('data')}`; split "
                f"`{config.get('split')}`; seed {config.get('seed')}.", ""]
    if summary is None:
        out += ["The run has not ended: no test metrics yet. What exists so far is below; run "
                "`make results` again later.", ""]
        if st.get("best") is not None:
            out += [f"Best validation macro-F1 so far: {st['best']:.4f} (epoch "
                    f"{st.get('best_epoch', '?')}).", ""]
    else:
        test, val = summary["test"], summary.get("validation", {})
        out += ["## Test metrics (held-out speakers)", ""]
        out += _table(["metric", "value"], [["accuracy", f"{test['accuracy']:.4f}"],
                                            ["macro-F1", f"{test['macro_f1']:.4f}"],
                                            ["UAR", f"{test['uar']:.4f}"]])
        if summary.get("members"):  # --ensemble: each member a run of its own
            out += ["", f"Validation macro-F1 {val['best_macro_f1']:.4f}: the mean probability "
                    f"of {len(summary['members'])} members, each at its own best epoch:", ""]
            out += _table(["member", "seed", "best epoch", "head weight", "test macro-F1"],
                          [[f"`members/{k}`", m["seed"], m["best_epoch"], m["sync_weight"],
                            f"{m['test_macro_f1']:.4f}"] for k, m in enumerate(summary["members"])])
        elif val:
            out += ["", f"Best validation macro-F1 {val['best_macro_f1']:.4f} at epoch "
                    f"{val['best_epoch']} (the weights tested)."]
        labels = list(test["per_class"])
        out += ["", "## Per class", ""]
        out += _table(["class", "precision", "recall", "F1", "support"],
                      [[lab, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}",
                        c["support"]] for lab, c in test["per_class"].items()])
        out += ["", "## Confusion matrix (rows: true class, columns: predicted)", ""]
        out += _table(["true \\ predicted"] + labels,
                      [[lab] + row for lab, row in zip(labels, test["confusion_matrix"])])
        out += ["", "Every test clip's prediction (path, speaker, true and predicted label, each "
                "class's probability, how it was standardised): "
                "[predictions.csv](predictions.csv)."]
        out += _lone_clip_lines(summary.get("lone_clip"))
    out += ["", "## Training time and cost", ""]
    seconds = views.run_seconds(run_id, st)
    if summary:
        t = summary.get("timings", {})
        out.append(f"- trainer: {views.duration(t.get('total_seconds'))} in all, "
                   f"{views.duration(t.get('train_seconds'))} training, "
                   f"{t.get('mean_epoch_seconds', '-')} s per epoch on average")
    elif rows:
        so_far = sum(r.get("epoch_seconds", 0) for r in rows)
        out.append(f"- training so far: {views.duration(so_far)} over {len(rows)} epoch(s)")
    out.append(f"- wall clock from the start of the run: {views.duration(seconds)}")
    if price is not None:
        out.append(f"- cost: {views.cost_line(price, seconds)}")
        if price.note:
            out.append(f"- note: {price.note}")
    if summary:
        out += ["", "## Data set", ""] + _data_lines(summary)
        m = summary.get("model", {})
        out += ["", f"Model: {m.get('name')}, {m.get('parameters', '?')} parameters."]
    out += ["", "## Validation per epoch", "", "```"] + views.metrics_lines(rows) + ["```", ""]
    out += ["## Plots", ""] + (["![learning curves](plots/learning_curves.png)"] if rows else [])
    if summary:
        out.append("![confusion matrix](plots/confusion_matrix.png)")
    return "\n".join(out).rstrip() + "\n"


def _lone_clip_lines(lone: dict | None) -> list[str]:
    """The per-speaker model's lone-clip figures (a clip with no enrolment: the fallback)."""
    if not lone:
        return []
    v, t = lone.get("validation", {}), lone.get("test", {})
    head = ["", "## A lone clip without enrolment", "",
            f"This model standardises by speaker; a clip whose speaker has no statistics uses "
            f"the fallback `{lone.get('fallback')}` (`trainer enroll` gives a speaker theirs).",
            ""]
    keys = ("speaker", "fallback", "pooled", "clip", "blend")
    rows = [[name, *(f"{d[k]:.4f}" if isinstance(d.get(k), (int, float)) else "-" for k in keys)]
            for name, d in (("validation", v), ("test", t))]
    return head + _table(["macro-F1", "speaker statistics", *keys[1:]], rows)


def _data_lines(summary: dict) -> list[str]:
    data = summary.get("data", {})
    lines = [f"Source `{data.get('source')}`, split by {data.get('split')}; feature widths: "
             f"audio {data.get('audio_dim')}, video {data.get('video_dim')}.", ""]
    split_rows = []
    labels = sorted({lab for k in ("train", "val", "test")
                     for lab in (data.get(k) or {}).get("per_class", {})})
    for k in ("train", "val", "test"):
        part = data.get(k) or {}
        split_rows.append([k, part.get("clips", 0), len(part.get("speakers", []))]
                          + [part.get("per_class", {}).get(lab, 0) for lab in labels])
    lines += _table(["split", "clips", "speakers"] + labels, split_rows)
    skipped = data.get("skipped") or []
    lines += ["", f"Skipped clips: {len(skipped)}."]
    lines += [f"- `{s.get('path')}`: {s.get('reason')}" for s in skipped[:50]]
    if len(skipped) > 50:
        lines.append(f"- ... and {len(skipped) - 50} more (summary.json lists them all)")
    if data.get("excluded"):
        lines.append(f"Excluded by label (outside the label set): {data['excluded']}.")
    return lines


# ------------------------------------------------ a cross-validation array (make deploy FOLDS=)
def fetch_cv(bucket: str, run_id: str, dest_root: Path) -> Path:
    """Download an array run (every fold) into ``dest_root/RUN_ID``, write the aggregate over the
    folds that have ended (``trainer.cv.aggregate``: cv.json, cv.md, plots/cv_folds.png) and
    summary.md (mean ± std, the per-fold table). Works while folds still run."""

    dest = Path(dest_root) / run_id
    counts = runs.download(bucket, run_id, dest)
    record = _read(dest / "batch.json") or {}
    ended = sorted(p.parent.name for p in dest.glob("fold-*/summary.json"))
    cv = aggregate(str(dest)) if ended else None
    states = {p.parent.name: (_read(p) or {}) for p in dest.glob("fold-*/status.json")}
    atomic_write_text(dest / "summary.md", cv_markdown(run_id, record, cv, states))
    print(f"results/{run_id}: {counts['downloaded']} file(s) downloaded, {counts['unchanged']} "
          f"unchanged; {len(ended)} of {record.get('size', '?')} task(s) ended: "
          + ("cv.json and " if cv else "no cv.json yet; ") + "summary.md written")
    return dest


def _mean_std(value) -> str:
    if isinstance(value, dict) and value.get("mean") is not None:
        return f"{value['mean']:.4f} ± {value.get('std') or 0:.4f}"
    return "-"


def cv_markdown(run_id: str, record: dict, cv: dict | None, states: dict[str, dict]) -> str:
    """summary.md of an array run: the summary over folds (mean ± std), then one row per task."""
    size = record.get("size", len(states))
    out = [f"# Cross-validation run {run_id}", "",
           f"{record.get('folds', '?')} speaker folds x {len(record.get('seeds', [])) or '?'} "
           f"seed(s) {record.get('seeds', '')} = {size} task(s), run as AWS Batch array job "
           f"`{record.get('job_id', '?')}` (image `{record.get('image', '?')}`).", ""]
    if not cv or not cv.get("folds"):
        out += ["No task has ended yet: no test metrics. Run `make results` again later.", ""]
    else:
        s = cv.get("summary", {})
        done = s.get("tasks_done", len(cv["folds"]))
        out += [f"## Test metrics over {done} of {size} task(s): mean ± std", ""]
        out += _table(["metric", "mean ± std"], [["accuracy", _mean_std(s.get("accuracy"))],
                                                 ["macro-F1", _mean_std(s.get("macro_f1"))],
                                                 ["UAR", _mean_std(s.get("uar"))]])
        out += ["", "## Per fold", ""]
        rows = []
        for f in cv["folds"]:
            t = f.get("test", {})
            seed = "-" if f.get("seed") is None else f["seed"]  # unknown without cv-task.json
            rows.append([f.get("dir", f.get("fold")), f.get("fold"), seed,
                         ", ".join(f.get("test_speakers", [])) or "-",
                         *(f"{t[k]:.4f}" if isinstance(t.get(k), (int, float)) else "-"
                           for k in ("accuracy", "macro_f1", "uar"))])
        out += _table(["task", "fold", "seed", "test speakers", "accuracy", "macro-F1", "UAR"],
                      rows)
        missing = sorted(set(states) - {str(f.get("dir")) for f in cv["folds"]})
        if missing:
            out += ["", "Not ended yet: " + ", ".join(
                f"{d} ({states[d].get('state', '?')}, epoch {states[d].get('epoch', 0)})"
                for d in missing) + "."]
        out += ["", "cv.json has every figure (per class, the confusion matrix summed over folds); "
                "cv.md and plots/cv_folds.png are the aggregate's own; every test clip's "
                "prediction, with its fold: [predictions.csv](predictions.csv).", "",
                "![per-fold metrics](plots/cv_folds.png)"]
    return "\n".join(out).rstrip() + "\n"
