"""``make monitor``: a plain terminal menu over one run; a number (or letter) and Enter.

    python -m trainer monitor                    # the newest run
    python -m trainer monitor --run RUN_ID --backend local

Each choice reads the run directory (and the host) afresh, and is also a plain command:
1 and 2 are `make logs` (FOLLOW=1), 3 to 6 parts of `make status`, t `make results` (only the
TensorBoard event files, all folds of an array) then `make tensorboard` on them. On a cross-validation array
(``make deploy FOLDS=5``), 6 and 5 are the whole array, one line per fold; 1, 2, 3 and 4 ask
for a fold (and a seed, with several) and show that task. Reads stdin line by line,
so it works in any terminal, over SSH, in `script`, and under a test driving a pseudo-terminal.
"""

from __future__ import annotations

from pathlib import Path

from trainer.ops import OpsError, arrays, batch, board, runs, views
from trainer.ops.flow import host_facts

MENU = """\
  1  recent logs
  2  follow the logs live (Ctrl-C: back to this menu)
  3  resource use (CPU, memory, disk)
  4  validation metrics per epoch (table and chart)
  5  time to completion
  6  status and cost
  t  TensorBoard of this run (its events downloaded to results/; Ctrl-C: back to this menu)
  r  another run
  q  quit"""


class Monitor:
    def __init__(self, backend, out: dict, run_id: str, read=input, write=print,
                 results: str | Path = "results"):
        self.backend, self.out, self.run_id = backend, out, run_id
        self.results = Path(results)  # where `t` downloads the run's events, as `make results`
        self.read, self.write = read, write
        self.bucket = out["bucket"]
        self.record = batch.read_record(self.bucket, run_id)
        self.task: dict | None = None  # the task (fold row) the array choices look at

    def rows(self) -> list[dict]:
        return arrays.fold_rows(self.bucket, self.run_id, self.record,
                                batch.children(batch.client(self.out), self.record))

    def pick_task(self) -> dict | None:
        """Ask for a fold (and a seed, with several seeds) of the array; its row, or None."""
        rec = self.record
        fold = self.read(f"fold (1-{rec['folds']})> ").strip()
        seed = str(rec["seeds"][0])
        if len(rec["seeds"]) > 1:
            seed = self.read(f"seed ({','.join(map(str, rec['seeds']))})> ").strip()
        for row in self.rows():
            if str(row["fold"]) == fold and str(row["seed"]) == seed:
                self.task = row
                return row
        self.write(f"no task fold {fold!r} seed {seed!r} in this run")
        return None

    def status(self) -> dict | None:
        if self.record is not None:
            return self.task["status"] if self.task else None
        return runs.status(self.bucket, self.run_id)

    def array_choice(self, choice: str) -> bool:
        """The choices of an array run; False when ``choice`` is not one of them."""
        show = lambda lines: self.write("\n".join(lines))  # noqa: E731
        if choice in ("5", "6"):
            rows = self.rows()
            show(views.array_lines(self.run_id, self.record, rows, arrays.overall_eta(rows)))
            return True
        if choice not in ("1", "2", "3", "4"):
            return False
        row = self.pick_task()
        if row is None:
            return True
        prefix = f"{self.run_id}/{row['dir']}"
        if choice in ("1", "2"):
            def done():
                return batch.children(batch.client(self.out), self.record)[row["index"]][
                    "status"] in batch.FINAL

            lines = self.backend.child_log_lines(self.out, self.record, row["batch"], tail=40,
                                                 follow=choice == "2", done=done)
            if lines is None:
                self.write(f"no live log for {row['dir']} yet (Batch: {row['batch']['status']})")
                return True
            try:
                for line in lines:
                    self.write(line)
            except KeyboardInterrupt:
                self.write("\n(stopped following)")
        elif choice == "3":
            show(views.resource_lines(row["status"]))
        else:
            show(views.metrics_lines(runs.metrics(self.bucket, prefix)))
        return True

    def host(self) -> dict | None:
        return host_facts(self.backend, self.out, self.run_id, say=self.write)

    def logs(self, follow: bool) -> None:
        lines = self.backend.log_lines(self.out, self.run_id, tail=40, follow=follow,
                                       done=lambda: not runs.is_going(self.status()))
        if lines is None:
            self.write(f"no live log for run {self.run_id} (not started yet, or its container is "
                       "gone); `make logs` falls back to train.log in the run directory")
            return
        try:
            for line in lines:
                self.write(line)
        except KeyboardInterrupt:
            self.write("\n(stopped following)")

    def config(self) -> dict | None:
        return runs.read_json(self.bucket, self.run_id, "config.json")

    def choose(self, choice: str) -> bool:
        """Do one choice; False to quit."""
        show = lambda lines: self.write("\n".join(lines))  # noqa: E731
        if choice in ("q", "quit", "exit"):
            return False
        if self.record is not None and self.array_choice(choice):
            return True
        if choice == "1":
            self.logs(follow=False)
        elif choice == "2":
            self.logs(follow=True)
        elif choice == "3":
            show(views.resource_lines(self.status(), self.host()))
        elif choice == "4":
            show(views.metrics_lines(runs.metrics(self.bucket, self.run_id)))
        elif choice == "5":
            show(views.eta_lines(self.status(), runs.metrics(self.bucket, self.run_id),
                                 self.config()))
        elif choice == "6":
            show(views.status_lines(self.run_id, self.status(), self.host()))
        elif choice == "t":
            self.tensorboard()
        elif choice == "r":
            known = runs.list_runs(self.bucket)
            self.write("runs: " + ", ".join(known[-10:]))
            wanted = self.read("run id (Enter: the newest)> ").strip()
            try:
                self.run_id = runs.resolve(self.bucket, wanted or None)
                self.record, self.task = batch.read_record(self.bucket, self.run_id), None
            except OpsError as e:
                self.write(f"error: {e}")
        elif choice:
            self.write(f"no choice {choice!r}: type 1 to 6, t, r or q")
        return True

    def tensorboard(self) -> None:
        """Download the run's event files (every fold's, for an array) and serve them until
        Ctrl-C."""
        dest = self.results / self.run_id
        counts = runs.download(self.bucket, self.run_id, dest, select=runs.is_event_file)
        self.write(f"{dest}: {counts['downloaded']} event file(s) downloaded, "
                   f"{counts['unchanged']} unchanged")
        dest.mkdir(parents=True, exist_ok=True)
        board.serve([str(dest)], say=self.write)

    def loop(self) -> int:
        while True:
            if self.record is not None:
                kids = batch.children(batch.client(self.out), self.record)
                tally = ", ".join(f"{n} {s.lower()}" for s, n in batch.counts(kids).items())
                self.write(f"\n== run {self.run_id} ({self.backend.name}): cross-validation "
                           f"array of {self.record['size']} task(s): {tally} ==")
            else:
                st = self.status() or {}
                self.write(f"\n== run {self.run_id} ({self.backend.name}): "
                           f"{st.get('state', 'starting')}, epoch {st.get('epoch', 0)}/"
                           f"{st.get('epochs_max', '?')} ==")
            self.write(MENU)
            try:
                choice = self.read("choice> ").strip().lower()
            except (EOFError, KeyboardInterrupt):
                self.write("")
                return 0
            try:
                if not self.choose(choice):
                    return 0
            except OpsError as e:
                self.write(f"error: {e}")
