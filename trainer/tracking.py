"""TensorBoard event files for one run, in ``RUN/tb/`` (DESIGN.md section 9).

    >>> t = Tracker(RunDir("runs/demo"))
    >>> t.epochs([{"epoch": 1, "train_loss": 1.2, "val_loss": 1.1, "val_macro_f1": 0.4, ...}])
    >>> t.finish(asdict(cfg), test_report, LABELS, history)

Per epoch, the scalars of that epoch's ``metrics.jsonl`` line (``SCALARS``); at the end the test
metrics, the hyperparameters (TensorBoard's hparams view, with the test metrics as its metrics),
and the confusion matrix and per-class F1 as images. The events go through the run directory
like every other file: written under its local folder (an ``s3://`` run's staging folder),
flushed and published after each epoch, so the mirror's own thread uploads them and a stalled
S3 never holds up training. The writer only writes when told to flush (its queue and timer are
set past an epoch's events), so the file changes once per epoch, right before it is published.

Without the ``tensorboard`` package (the ``tracking`` extra), the first run says so in one
warning line and everything else works as before.
"""

from __future__ import annotations

import struct

import structlog

from trainer import plots
from trainer.store.rundir import RunDir

log = structlog.get_logger()

# metrics.jsonl's key -> TensorBoard tag. Train and validation loss share the "loss/" section.
SCALARS = {
    "train_loss": "loss/train", "val_loss": "loss/val",
    "val_accuracy": "val/accuracy", "val_macro_f1": "val/macro_f1", "val_uar": "val/uar",
    "lr": "train/lr", "samples_per_second": "speed/clips_per_second",
    "padding_efficiency": "speed/padding_efficiency", "epoch_seconds": "speed/epoch_seconds",
}
TEST_METRICS = ("accuracy", "macro_f1", "uar")  # -> test/<name>, the hparams view's metrics
FOLDER = "tb"
warned = False  # one warning per process: a cross-validation's folds would repeat it


def summary_writer(logdir: str, purge_step: int | None = None):
    """A ``SummaryWriter`` that writes only on ``flush``/``close``, or None (one warning line
    per process) when tensorboard is not installed."""
    global warned
    try:
        # optional (the tracking extra), and torch.utils.tensorboard imports it at once
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        if not warned:
            warned = True
            log.warning("tensorboard_missing", error=str(e)[:200],
                        message="no TensorBoard events in tb/; install the tracking extra "
                                "(pip install -e '.[tracking]') to have them")
        return None
    return SummaryWriter(logdir, purge_step=purge_step, max_queue=10_000, flush_secs=86_400)


def png_image(tag: str, png: bytes):
    """A TensorBoard image summary holding ``png`` as it is (no decoding)."""
    # tensorboard's protobuf: present whenever a writer is
    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height = struct.unpack(">II", png[16:24])  # the PNG's IHDR chunk
    image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def hparam_value(v):
    """A setting as the hparams view takes it: numbers, strings and booleans; others as text."""
    return v if isinstance(v, (bool, int, float, str)) else str(v)


class Tracker:
    """The TensorBoard side of one run; every method does nothing without tensorboard.

    Like ``metrics.jsonl``, the events hold exactly the epochs of the run's history: the
    writer opens with TensorBoard's purge from epoch 1 on, and this process writes the whole
    history (a resumed run's from its checkpoint). So what an earlier, killed process logged
    (part of it perhaps never uploaded, or past its last checkpoint) is neither missing nor
    shown twice.

    Args:
        run_dir: the run's directory; events go to ``RUN/tb/``.
    """

    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir
        self.writer = None
        self.opened = False
        self.written = 0  # epochs of the history written by this process

    def open(self):
        if not self.opened:
            self.opened = True
            self.writer = summary_writer(str(self.run_dir.path(FOLDER)), purge_step=1)
        return self.writer

    def publish(self) -> None:
        """Flush the events to disk and queue the event files for the run's mirror."""
        self.writer.flush()
        for path in sorted(self.run_dir.path(FOLDER).glob("events.*")):
            self.run_dir.publish(f"{FOLDER}/{path.name}")

    def epochs(self, history: list[dict]) -> None:
        """The ``metrics.jsonl`` lines not yet written, each as scalars at its epoch; then
        flushed and published."""
        w = self.open()
        if w is None:
            return
        for row in history[self.written:]:
            for key, tag in SCALARS.items():
                if row.get(key) is not None:
                    w.add_scalar(tag, row[key], row["epoch"])
        self.written = len(history)
        self.publish()

    def finish(self, settings: dict, test: dict, labels: list[str], history: list[dict]) -> None:
        """Any epochs not yet written, then at the last epoch's step the test metrics, the
        hparams summary (``settings`` -> the test metrics) and the confusion matrix and per-class
        F1 as images; then closes."""
        self.epochs(history)
        w, epochs = self.writer, history[-1]["epoch"] if history else 0
        if w is None:
            return
        # torch's tensorboard summaries, loaded with the writer above
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"test/{k}": float(test[k]) for k in TEST_METRICS}
        for tag, value in metrics.items():
            w.add_scalar(tag, value, epochs)
        exp, ssi, sei = hparams({k: hparam_value(v) for k, v in settings.items()}, metrics)
        for summary in (exp, ssi, sei):
            w.file_writer.add_summary(summary)
        f1 = {lab: test["per_class"][lab]["f1"] for lab in labels}
        for tag, png in (("test/confusion_matrix", plots.confusion(test["confusion_matrix"],
                                                                   labels)),
                         ("test/per_class_f1", plots.per_class(f1, "Test F1 per class"))):
            w.file_writer.add_summary(png_image(tag, png), epochs)
        self.close()

    def close(self) -> None:
        """Write what is left and release the file (a stop or a failure ends here too)."""
        if self.writer is not None:
            self.publish()
            self.writer.close()
            self.writer = None
