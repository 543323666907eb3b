"""Text for the terminal: status, resource use, metrics per epoch (a table and a chart), ETA.

Plain functions from the run directory's files (status.json, metrics.jsonl, config.json) and a
backend's host facts to lines of text; ``make status``, ``make monitor`` and summary.md use them.

    >>> print(chart([0.2, 0.4, 0.5, 0.55], height=4))
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from trainer.ops import batch, pricing, runs


def duration(seconds: float | None) -> str:
    """'1h 02m', '3m 20s', '45s'; '-' when unknown."""
    if seconds is None:
        return "-"
    s = int(round(max(seconds, 0)))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def run_seconds(run_id: str, st: dict | None, now: float | None = None) -> float | None:
    """How long the run has taken: from its start (in its id) to now, or to its last heartbeat
    when it has ended."""
    start = runs.started_at(run_id)
    if start is None:
        return None
    end = now or time.time()
    if st and st.get("state") in runs.FINAL_STATES and runs.age_seconds(st, end) is not None:
        end -= runs.age_seconds(st, end)
    return end - start.timestamp()


def cost_line(price: pricing.Price, seconds: float | None) -> str:
    usd = pricing.cost(price, seconds)
    if price.usd_per_hour == 0:
        return f"$0.00 ({price.source})"
    if usd is None:
        return f"unknown ({price.note or price.source})"
    return (f"${usd:.2f} so far ({(seconds or 0) / 3600:.2f} h at ${price.usd_per_hour:.4f}/h, "
            f"{price.source})")


def status_lines(run_id: str, st: dict | None, host: dict | None = None,
                 now: float | None = None) -> list[str]:
    """The answer of ``make status``."""
    now = now or time.time()
    lines = [f"run        {run_id}"]
    if not st:
        lines.append("state      no status.json yet (the container is starting)")
    else:
        age = runs.age_seconds(st, now)
        lines.append(f"state      {st.get('state')} (updated {duration(age)} ago)")
        if st.get("state") not in runs.FINAL_STATES and (age is None or age > runs.FRESH_SECONDS):
            lines.append(f"warning    no heartbeat for {duration(age)}: the run is not running "
                         "(instance stopped or interrupted?); `make deploy` starts a new one")
        if st.get("state") == "extracting" and st.get("extract"):
            x = st["extract"]
            lines.append(f"extract    {x.get('clips_done', 0)} clip files of about "
                         f"{x.get('media_files', '?')} media files, {x.get('uploaded', 0)} in S3")
        lines.append(f"epoch      {st.get('epoch', 0)} / {st.get('epochs_max', '?')}{member(st)}")
        if st.get("best") is not None:
            lines.append(f"best       val macro-F1 {st['best']:.4f} at epoch "
                         f"{st.get('best_epoch', '?')}")
        if st.get("state") not in runs.FINAL_STATES:
            lines.append(f"ETA        {duration(st.get('eta_seconds'))} to the epoch cap, "
                         f"{duration(st.get('eta_early_stop_seconds'))} if early stopping comes "
                         "first")
        if st.get("test_macro_f1") is not None:
            lines.append(f"test       macro-F1 {st['test_macro_f1']:.4f}")
    if host:
        lines.append(f"host       {host['where']}: {host.get('state', '?')}")
        lines.append(f"cost       {cost_line(host['price'], run_seconds(run_id, st, now))}")
        if host["price"].note:
            lines.append(f"note       {host['price'].note}")
    return lines


def resource_lines(st: dict | None, host: dict | None = None) -> list[str]:
    """CPU, memory and disk of the trainer (status.json) and of its host."""
    r = (st or {}).get("resources") or {}
    lines = ["trainer process (status.json):"]
    if r:
        lines += [f"  CPU          {r.get('cpu_percent', '-')} % (of one core; "
                  f"{r.get('threads', '-')} threads)",
                  f"  memory       {r.get('rss_mb', '-')} MB resident; the machine's memory "
                  f"{r.get('system_memory_percent', '-')} % used",
                  f"  disk free    {r.get('disk_free_gb', '-')} GB"]
    else:
        lines.append("  no figures yet")
    if host:
        lines.append(f"host: {host['where']}: {host.get('state', '?')}")
        if "instance_cpu_percent" in host:
            cpu = host["instance_cpu_percent"]
            lines.append(f"  instance CPU {cpu if cpu is not None else 'no CloudWatch point yet'}"
                         f"{' % (5-minute average, CloudWatch)' if cpu is not None else ''}")
        if "container_cpu_percent" in host:
            lines.append(f"  container    CPU {host['container_cpu_percent']} %, memory "
                         f"{host['container_memory_mb']} MB (docker stats)")
    return lines


COLUMNS = [("epoch", "epoch", "{:>5}"), ("train_loss", "train loss", "{:>10.4f}"),
           ("val_loss", "val loss", "{:>8.4f}"), ("val_accuracy", "val acc", "{:>7.3f}"),
           ("val_macro_f1", "val F1", "{:>6.3f}"), ("val_uar", "val UAR", "{:>7.3f}"),
           ("lr", "lr", "{:>8.1e}"), ("epoch_seconds", "seconds", "{:>7.1f}")]


def metrics_table(rows: list[dict]) -> list[str]:
    """One line per epoch; the best validation macro-F1 is marked with *."""
    if not rows:
        return ["no epoch has finished yet"]
    best = max(rows, key=lambda r: r.get("val_macro_f1", -1))["epoch"]
    head = " ".join(f"{title:>{len(fmt.format(0))}}" for _, title, fmt in COLUMNS)
    out = [head]
    for r in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            v = r.get(key)
            cells.append(fmt.format(v) if isinstance(v, (int, float)) else
                         f"{'-':>{len(fmt.format(0))}}")
        out.append(" ".join(cells) + (" *" if r["epoch"] == best else ""))
    return out


def chart(values: list[float], height: int = 8, width: int = 60, title: str = "") -> list[str]:
    """A small plot of ``values`` (one column per point, sampled down to ``width``)."""
    if not values:
        return []
    n = len(values)
    if n > width:
        values = [values[int(i * n / width)] for i in range(width)]
    lo, hi = min(values), max(values)
    if hi == lo:  # a flat line: centre it in a small band
        lo, hi = lo - 0.05, hi + 0.05
    span = hi - lo
    rows = [int(round((v - lo) / span * (height - 1))) for v in values]
    out = [title] if title else []
    for level in range(height - 1, -1, -1):
        label = f"{lo + span * level / (height - 1):6.3f}" if level in (0, height - 1) else ""
        out.append(f"{label:>6} |" + "".join("*" if r == level else " " for r in rows))
    out.append("       +" + "-" * len(values))
    out.append(f"        epoch 1 .. {n}" + (f" (every {n / len(values):.1f})" if n > width else ""))
    return out


def metrics_lines(rows: list[dict]) -> list[str]:
    vals = [r["val_macro_f1"] for r in rows if "val_macro_f1" in r]
    return metrics_table(rows) + [""] + chart(vals, title="validation macro-F1 per epoch")


def member(st: dict) -> str:
    """`` (member K of N)`` while an ensemble trains its members (trainer.train_members)."""
    return f" (member {st['member']} of {st['members']})" if st.get("member") else ""


def eta_lines(st: dict | None, rows: list[dict], config: dict | None) -> list[str]:
    """Time to completion: epoch times, the epoch cap and how close early stopping is."""
    if not st:
        return ["no status yet"]
    if st.get("state") in runs.FINAL_STATES:
        return [f"the run has ended: {st.get('state')} after {st.get('epoch', 0)} epoch(s)"]
    epoch, cap = st.get("epoch", 0), st.get("epochs_max") or (config or {}).get("epochs")
    recent = [r["epoch_seconds"] for r in rows[-5:] if "epoch_seconds" in r]
    per = sum(recent) / len(recent) if recent else None
    lines = [f"epoch {epoch} of at most {cap}{member(st)}"
             + (f"; {per:.1f} s per epoch (mean of the last {len(recent)})" if per else
                "; no epoch time yet")]
    lines.append(f"to the epoch cap:   {duration(st.get('eta_seconds'))}"
                 + (f" ({cap - epoch} epochs)" if isinstance(cap, int) else ""))
    patience = (config or {}).get("patience")
    best_epoch = st.get("best_epoch")
    if patience and best_epoch is not None:
        since = epoch - best_epoch
        left = max(patience - since, 0)
        lines.append(f"early stopping:     {since} epoch(s) without a better val macro-F1 "
                     f"(patience {patience}); stops in {left} epoch(s), "
                     f"{duration(st.get('eta_early_stop_seconds'))}, unless it improves")
    else:
        lines.append(f"early stopping:     {duration(st.get('eta_early_stop_seconds'))} at the "
                     "soonest")
    lines.append("then the test set is scored (seconds) and the instance stops itself")
    return lines


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ------------------------------------------------------ a cross-validation array (Batch)
def fold_line(row: dict, now: float | None = None) -> str:
    """One task of an array: Batch state, then the fold's own state, epoch, best and ETA."""
    st, kid = row["status"] or {}, row["batch"]
    age = runs.age_seconds(st, now) if st else None
    state = st.get("state", "-")
    if st and state not in runs.FINAL_STATES and (age is None or age > runs.FRESH_SECONDS):
        state += f" (no heartbeat for {duration(age)})"
    best = f"{st['best']:.4f}" if st.get("best") is not None else "-"
    eta = duration(st.get("eta_seconds")) if st and st.get("state") not in runs.FINAL_STATES \
        else "-"
    extra = kid.get("reason") if kid["status"] == "FAILED" and kid.get("reason") else ""
    if kid.get("attempts", 0) > 1:
        extra = f"attempt {kid['attempts']}" + (f"; {extra}" if extra else "")
    return (f"{row['dir']:<16} {kid['status']:<10} {state:<12} "
            f"{st.get('epoch', 0):>3}/{st.get('epochs_max', '?'):<4} {best:>7} {eta:>8}"
            + (f"  {extra}" if extra else ""))


def array_lines(run_id: str, record: dict, rows: list[dict], eta: float | None,
                now: float | None = None) -> list[str]:
    """The answer of ``make status`` for an array run: the array, then one line per task."""

    kids = [r["batch"] for r in rows]
    tally = ", ".join(f"{n} {s.lower()}" for s, n in batch.counts(kids).items())
    done = sum(1 for r in rows if (r["status"] or {}).get("state") == "done")
    lines = [f"run        {run_id} (cross-validation: {record['folds']} folds x "
             f"{len(record['seeds'])} seed(s) = {record['size']} task(s))",
             f"array      AWS Batch job {record['job_id']}: {batch.array_state(kids)} ({tally})",
             f"done       {done} of {record['size']} task(s) with test metrics",
             f"ETA        {duration(eta)}" + (" (estimate: queued folds start as running ones "
                                               "end)" if any(k['status'] in batch.QUEUED
                                                             for k in kids) else ""),
             "",
             f"{'task':<16} {'batch':<10} {'state':<12} {'epoch':>8} {'best':>7} {'ETA':>8}"]
    return lines + [fold_line(r, now) for r in rows]
