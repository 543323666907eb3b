"""The training recipe: data -> split -> normalise -> train with early stopping -> test.

    python -m trainer train --data demo-data --out runs/demo
    python -m trainer train --data s3://bucket/data/ --out s3://bucket/runs/r1/ --resume

One class with ``setup``, ``train``, ``finish`` and ``cleanup`` (after torchtune's recipes);
the loop is written out plainly. Every epoch writes ``checkpoints/last.pt`` (and ``best.pt``
when validation improves) with all a resume needs, the position inside an epoch too: SIGTERM
or Ctrl-C saves at the next batch boundary, so a resumed run ends as one never stopped.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path

import structlog
import torch

from trainer import logs, plots, tracking
from trainer.averaging import WeightAverage, checkpoint_weights, restore_weights
from trainer.batching import Normalizer, bucket_batches, collate, padding_efficiency
from trainer.checkpoint import CheckpointPair, read_checkpoint
from trainer.config import TrainConfig, model_settings, prepare_settings
from trainer.data import LABELS, check_data, load_dataset
from trainer.errors import EXIT_STOPPED, CheckpointError, DataError, Stopped, exit_now
from trainer.evaluate import predict_logits, predictions_csv, score_rows
from trainer.fallback import choose, fallback_state
from trainer.losses import focal_loss, inverse_frequency_weights, training_loss
from trainer.metrics import classification_report
from trainer.model import build_model, count_parameters
from trainer.prepare import pool_clip, standardise, training_views
from trainer.splits import data_summary, given_split, make_split
from trainer.spot import SpotWatcher
from trainer.status import Status, eta, timings, versions
from trainer.store.rundir import RunDir
from trainer.store.uri import is_s3, resolve_data
from trainer.train_media import extract_in_run
from trainer.train_linear import fit_after_training
from trainer.train_members import fit_members
from trainer.train_sync import fit_sync

log = structlog.get_logger()

# The end's wait for S3 uploads (checkpoint first): a stop has the spot notice's 2 minutes.
UPLOAD_WAIT_SECONDS = {"stopped": 90.0, "failed": 90.0, None: 300.0}


class Training:
    """One training run. ``Training(cfg).run()`` returns the summary dict."""

    def __init__(self, cfg: TrainConfig, split: dict[str, list[str]] | None = None):
        self.cfg, self.given_split = cfg, split  # split: clip paths per split (cv's), or None
        self.relay = None  # an ensemble member's: its status updates, for the ensemble's
        self.run_dir = RunDir(cfg.out)
        self.stop_signal: int | None = None
        self.ckpts = CheckpointPair(self.run_dir)
        self.tracker = tracking.Tracker(self.run_dir)  # TensorBoard events in RUN/tb/
        self.t0 = time.time()

    # ----------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, run = self.cfg, self.run_dir
        if cfg.resume:
            run.exists("train.log")  # an S3 run's log comes down first, so this run appends to it
        logs.setup(run.path("train.log"))
        has_ckpt = run.exists("checkpoints/last.pt")
        if cfg.resume and not has_ckpt:
            raise DataError(f"--resume: no checkpoint at {run}/checkpoints/last.pt")
        if not cfg.resume and has_ckpt:
            raise DataError(f"{run} already holds a run; pass --resume to continue it, or "
                            "choose another --out")
        self.status = Status(run, cfg.epochs, self.relay)
        self.status.start()
        # On EC2 spot (AVE_WATCH_SPOT=1): an interruption notice becomes SIGTERM, so the
        # checkpoint is saved within one batch of the two-minute warning.
        self.spot = SpotWatcher.start_if_enabled()
        self.status.update(state="starting")
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        log.info("config", **asdict(cfg))

        self.ckpt = read_checkpoint(run.path("checkpoints/last.pt")) if cfg.resume else None
        if cfg.media:  # raw media: extracted into cfg.data first (trainer/train_media.py)
            self.epoch, self.step = 0, 0  # what a stop reports
            extract_in_run(cfg, self.status.update, self._on_signal, lambda: self.stop_signal)
            self.status.update(state="starting", extract=None)
        data_path = resolve_data(cfg.data, cfg.cache_dir)
        self.dataset = ds = load_dataset(data_path, cfg.audio_fps, progress=lambda it:
                                         logs.progress_bar(it, desc="loading clips"))
        log.info("data", clips=len(ds.clips), skipped=len(ds.skipped),
                 excluded=dict(ds.excluded), audio_dim=ds.audio_dim, video_dim=ds.video_dim)
        for s in ds.skipped:
            log.warning("clip_skipped", path=s["path"], reason=s["reason"])

        split = (given_split(ds.clips, self.given_split) if self.given_split is not None else
                 make_split(ds.clips, cfg.split, cfg.seed, cfg.val_fraction, cfg.test_fraction))
        if self.ckpt is not None and self.ckpt.get("split") != {
                k: [ds.clips[i].path for i in v] for k, v in split.items()}:
            raise DataError("--resume: the data set differs from the one this run started on")
        self.split = split
        if not split["train"] or not split["val"] or not split["test"]:
            raise DataError(f"too few clips or speakers to split: "
                            f"{ {k: len(v) for k, v in split.items()} }")
        clips = {k: [ds.clips[i] for i in v] for k, v in split.items()}
        # Pooled to the model's rates and standardised split by split: a speaker's statistics
        # come from its clips in that split alone, so no held-out clip shapes training's inputs.
        self.prepare = prepare_settings(cfg)
        pooled = {k: [pool_clip(c, self.prepare) for c in v] for k, v in clips.items()}
        ready = {k: standardise(v, cfg.norm) for k, v in pooled.items()}
        # A per-speaker model's lone-clip fallback, from the training split (trainer.fallback);
        # its held-out clips, pooled, measure it at the end.
        self.fallback = fallback_state(pooled["train"]) if cfg.norm == "speaker" else None
        self.pooled = {k: pooled[k] for k in ("val", "test")} if self.fallback else {}
        self.normalizer = (Normalizer.from_state_dict(self.ckpt["normalizer"]) if self.ckpt
                           else Normalizer.fit(ready["train"]))
        self.clips = {k: [self.normalizer(c) for c in v] for k, v in ready.items()}
        self.lengths = [c.audio.shape[0] for c in self.clips["train"]]
        if not self.ckpt:
            run.write_json("config.json", asdict(cfg))
            lines = ["path,label,speaker,split"] + [f"{c.path},{LABELS[c.label]},{c.speaker},{k}"
                                                   for k, v in clips.items() for c in v]
            run.write_text("splits.csv", "\n".join(lines) + "\n")

        torch.manual_seed(cfg.seed)
        self.settings = model_settings(cfg, ds.audio_dim, ds.video_dim, len(LABELS))
        self.model = build_model(cfg.model, **self.settings)
        # fused: one kernel for the whole update instead of a dozen per tensor (+4 % in bench)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay, fused=True)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience)
        self.ema = WeightAverage(self.model, cfg.ema)  # --ema 0: the weights themselves
        self.alpha = (inverse_frequency_weights([c.label for c in self.clips["train"]], len(LABELS))
                      if cfg.class_weights else None)
        # Loop state; a resumed run takes all of it from the checkpoint.
        self.epoch, self.step = 0, 0  # completed epochs; batches done in the current epoch
        self.partial = {"loss_sum": 0.0, "n": 0, "seconds": 0.0}
        self.best, self.best_epoch, self.since_best = -float("inf"), 0, 0
        self.best_state, self.history, self.members = None, [], []  # members: an ensemble's
        if self.ckpt:
            self._restore(self.ckpt)
        else:  # a synchrony head's fixed directions, before the first step (train_sync)
            fit_sync(self.model, self.clips["train"])
        log.info("model", name=cfg.model, parameters=count_parameters(self.model),
                 **{f"{k}_clips": len(v) for k, v in self.clips.items()},
                 **{f"{k}_speakers": len({c.speaker for c in v}) for k, v in self.clips.items()},
                 resumed_at_epoch=self.epoch if self.ckpt else None)

    def _restore(self, ckpt: dict) -> None:
        restore_weights(self.ema, ckpt, self.run_dir.path("checkpoints/last.pt"))
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.epoch, self.step = ckpt["epoch"], ckpt["step"]
        self.partial = dict(ckpt["partial"])
        self.best, self.best_epoch, self.since_best = (ckpt["best"], ckpt["best_epoch"],
                                                       ckpt["since_best"])
        self.history = [dict(h) for h in ckpt["history"]]
        self.best_state = self.ckpts.best_weights(ckpt)
        # metrics.jsonl is rewritten from the checkpoint: it holds exactly the epochs done.
        self.run_dir.write_text("metrics.jsonl", "".join(json.dumps(h) + "\n"
                                                         for h in self.history))

    # ---------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            **checkpoint_weights(self.ema), "model_name": self.cfg.model,
            "model_settings": self.settings, "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "rng": {"torch": torch.get_rng_state()},
            "epoch": self.epoch, "step": self.step, "partial": dict(self.partial),
            "best": self.best, "best_epoch": self.best_epoch, "since_best": self.since_best,
            "history": self.history, "normalizer": self.normalizer.state_dict(),
            "prepare": dict(self.prepare), "fallback": self.fallback,
            "extract": self.dataset.extraction,  # how (None: not by extract): predict on media
            "labels": list(LABELS), "config": asdict(self.cfg),
            "split": {k: [self.dataset.clips[i].path for i in v] for k, v in self.split.items()},
            "versions": versions(),
        }

    # --------------------------------------------------------------------------- train
    def _on_signal(self, signum, frame) -> None:
        sig = signal.Signals(signum)
        if self.stop_signal is None:
            self.stop_signal = signum
            log.warning("stop_requested", signal=sig.name,
                        message="saving a checkpoint at the next batch")
            return
        # A second signal. SIGTERM comes twice by design (the spot watcher, then docker stop):
        # it never cuts the stop short (docker's SIGKILL after its timeout is the hard stop).
        # A second Ctrl-C means "now", unless a checkpoint is being written or uploaded.
        if sig == signal.SIGINT and not self.ckpts.busy:
            exit_now(sig)
        log.warning("stop_already_requested", signal=sig.name, saving=self.ckpts.busy,
                    message="the checkpoint is saved first")

    def train_epoch(self) -> dict:
        cfg, model = self.cfg, self.model
        batches = bucket_batches(self.lengths, cfg.batch_size, cfg.seed, self.epoch, cfg.bucket)
        model.train()
        t_start = time.perf_counter() - self.partial["seconds"]
        bar = logs.progress_bar(range(self.step, len(batches)), total=len(batches),
                           desc=f"epoch {self.epoch + 1}/{cfg.epochs}")
        if hasattr(bar, "update"):
            bar.update(self.step)
        last_log = time.monotonic()
        for b in bar:
            batch = collate([self.clips["train"][i] for i in batches[b]], cfg.modality)
            other, lam = training_views(batch, [cfg.seed, self.epoch, b], cfg.time_mask,
                                        cfg.feature_mask, cfg.noise, cfg.mixup)
            loss = training_loss(model, batch, other, lam, self.alpha, cfg.focal_gamma)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.ema.update()
            n = len(batches[b])
            self.partial["loss_sum"] += loss.item() * n
            self.partial["n"] += n
            self.step = b + 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{self.partial['loss_sum'] / self.partial['n']:.4f}")
            elif time.monotonic() - last_log > 30:
                last_log = time.monotonic()
                log.info("progress", epoch=self.epoch + 1, batch=self.step, batches=len(batches))
            if self.stop_signal is not None:
                self.partial["seconds"] = time.perf_counter() - t_start
                self.ckpts.save(self.state())
                raise Stopped(EXIT_STOPPED.get(signal.Signals(self.stop_signal), 1))
        seconds = time.perf_counter() - t_start
        out = {"train_loss": self.partial["loss_sum"] / max(self.partial["n"], 1),
               "epoch_seconds": round(seconds, 3),
               "samples_per_second": round(self.partial["n"] / max(seconds, 1e-9), 2),
               "padding_efficiency": round(padding_efficiency(batches, self.lengths), 4)}
        self.step, self.partial = 0, {"loss_sum": 0.0, "n": 0, "seconds": 0.0}
        return out

    def validate(self) -> tuple[float, dict]:
        """Validation focal loss and metrics, from one pass over the validation clips."""
        clips = self.clips["val"]
        with self.ema.applied():
            logits = predict_logits(self.model, clips, self.cfg.batch_size, self.cfg.modality)
        labels = torch.tensor([c.label for c in clips])
        loss = focal_loss(logits, labels, self.alpha, self.cfg.focal_gamma).item()
        return loss, classification_report(labels.tolist(), logits.argmax(1).tolist(), LABELS)

    def train(self) -> None:
        cfg = self.cfg
        if cfg.ensemble > 1:  # each member a whole run of its own (trainer.train_members)
            self.ckpts.save(self.state())  # a run begun, resumed with --resume like any other
            self.members = fit_members(self, Training)
            self.best_state = None  # the members' own best weights are the ensemble's
            self.ckpts.save(self.state(), best=True)
            return
        self.status.update(state="training", epoch=self.epoch)
        while self.epoch < cfg.epochs and self.since_best < cfg.patience:
            ep = self.train_epoch()
            val_loss, val = self.validate()
            self.epoch += 1
            row = {"epoch": self.epoch, "train_loss": round(ep["train_loss"], 6),
                   "val_loss": round(val_loss, 6),
                   "val_accuracy": round(val["accuracy"], 6),
                   "val_macro_f1": round(val["macro_f1"], 6), "val_uar": round(val["uar"], 6),
                   "lr": self.opt.param_groups[0]["lr"], **ep}
            score = val["macro_f1"] if cfg.select == "macro_f1" else -val_loss  # higher: better
            self.sched.step(score)
            improved = score > self.best
            if improved:
                self.best, self.best_epoch, self.since_best = score, self.epoch, 0
                self.best_state = self.ema.state_dict()
            else:
                self.since_best += 1
            self.history.append(row)
            self.ckpts.save(self.state(), best=improved)
            logs.flush()
            self.run_dir.publish("train.log")  # a run killed at any moment keeps its log
            self.run_dir.append_line("metrics.jsonl", json.dumps(row))
            self.tracker.epochs(self.history)
            best = self.history[self.best_epoch - 1]["val_macro_f1"]  # what status calls best
            log.info("epoch", **row, best=round(best, 4), best_epoch=self.best_epoch)
            times = [h["epoch_seconds"] for h in self.history]
            self.status.update(state="training", epoch=self.epoch, best=round(best, 6),
                               best_epoch=self.best_epoch, **eta(times, cfg.epochs - self.epoch,
                                                                 cfg.patience - self.since_best))
            if self.stop_signal is not None:
                raise Stopped(EXIT_STOPPED.get(signal.Signals(self.stop_signal), 1))
        if self.since_best >= cfg.patience:
            log.info("early_stop", epoch=self.epoch, best_epoch=self.best_epoch)

    # ---------------------------------------------------------------------- test, summary
    def finish(self) -> dict:
        cfg, run, ds = self.cfg, self.run_dir, self.dataset
        self.status.update(state="evaluating", epoch=self.epoch, eta_seconds=0)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        sync, linear = fit_after_training(self.model, self.clips, cfg)
        test, rows = score_rows(self.model, self.clips["test"], LABELS, self.prepare,
                                cfg.batch_size, cfg.modality)
        lone = self.measure_fallback()  # evaluate, predict, export read both in the checkpoints
        kept = {"sync_weight": sync["weight"], "fallback": self.fallback,
                "linear_head": linear and self.model.linear.state_dict()}
        self.ckpts.amend(**{k: v for k, v in kept.items() if v is not None})
        run.write_text("predictions.csv", predictions_csv(rows))  # a row per test clip
        summary = {
            "test": test,
            "validation": {"best_macro_f1": self.history[self.best_epoch - 1]["val_macro_f1"]
                           if self.best_epoch else self.validate()[1]["macro_f1"],
                           "best_epoch": self.best_epoch, "selected_by": cfg.select},
            "lone_clip": lone, "linear_head": linear, "sync_weight": sync["weight"],
            "sync_validation_macro_f1": sync.get("validation_macro_f1"),  # the weights' scores
            "model": {"name": cfg.model, "parameters": count_parameters(self.model),
                      "settings": self.settings},
            "data": data_summary(ds, self.split, cfg.data, cfg.split),
            **({"members": self.members} if self.members else {}),
            "epochs": self.epoch, "stopped_early": self.since_best >= cfg.patience,
            "timings": timings(self.t0, self.history, self.members),
            "versions": versions(),
        }
        run.write_json("summary.json", summary)
        if self.history:  # an ensemble's: its members' run directories
            run.write_bytes("plots/learning_curves.png", plots.learning_curves(self.history))
        run.write_bytes("plots/confusion_matrix.png",
                        plots.confusion(test["confusion_matrix"], LABELS))
        self.tracker.finish(asdict(cfg), test, LABELS, self.history)
        log.info("test", accuracy=round(test["accuracy"], 4), macro_f1=round(test["macro_f1"], 4),
                 uar=round(test["uar"], 4), best_epoch=self.best_epoch)
        self.status.update(state="done", epoch=self.epoch, eta_seconds=0,
                           eta_early_stop_seconds=0, test_macro_f1=round(test["macro_f1"], 6))
        return summary

    def measure_fallback(self) -> dict | None:
        """The lone-clip fallback chosen on validation, with held-out macro-F1 by speaker
        statistics and each candidate (``choose`` sets self.fallback; predict quotes it)."""
        if self.fallback is None:
            return None
        return choose(self.fallback, self.model, self.normalizer, self.pooled, LABELS,
                      self.cfg.batch_size, self.cfg.modality)

    def cleanup(self, state: str | None = None) -> None:
        if getattr(self, "spot", None) is not None:
            self.spot.stop()
        if (status := getattr(self, "status", None)) is not None:
            status.stop()
            if state:
                status.update(state=state)
        self.tracker.close()
        logs.flush()
        try:
            with self.ckpts.saving():  # the checkpoint's upload is part of saving it
                self.run_dir.close(UPLOAD_WAIT_SECONDS[state if state in UPLOAD_WAIT_SECONDS
                                                       else None])
        except Exception as e:  # S3 down at the very end: say so, keep the run's own outcome
            log.error("publish_failed", error=str(e)[:300])
            if state is None:
                raise

    def run(self) -> dict:
        """setup, train, test; a stop signal saves a checkpoint and raises ``Stopped``."""
        if not is_s3(self.cfg.data) and not self.cfg.media:
            # A missing path or a malformed manifest: one line before the heartbeat, the log
            # or anything else is written (or uploaded, to an s3:// run directory).
            check_data(self.cfg.data)
        if self.cfg.media and not is_s3(self.cfg.media) and not Path(self.cfg.media).is_dir():
            raise FileNotFoundError(f"--media {self.cfg.media}: no such folder of media")
        old = {s: signal.signal(s, self._on_signal) for s in EXIT_STOPPED}
        try:
            self.setup()
            self.train()
            summary = self.finish()
        except Stopped:
            log.warning("stopped", epoch=self.epoch, step=self.step,
                        checkpoint=f"{self.run_dir}/checkpoints/last.pt")
            self.cleanup("stopped")
            raise
        except BaseException as e:
            # The CLI prints bad input as one line; the log file keeps the record either way.
            if isinstance(e, SystemExit):  # a second Ctrl-C: last.pt is the previous save
                log.warning("stopped_at_once", epoch=getattr(self, "epoch", 0),
                            step=getattr(self, "step", 0))
                self.cleanup("stopped")
                raise
            log.error("failed", error=f"{type(e).__name__}: {e}"[:500],
                      file_only=isinstance(e, (DataError, ValueError, CheckpointError)))
            self.cleanup("failed")
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        self.cleanup()
        return summary


def train(cfg: TrainConfig, split: dict[str, list[str]] | None = None) -> dict:
    """Run one training to the end; the summary dict (also in summary.json). ``split``: clip
    paths per split (train, val, test) chosen outside, e.g. by ``cv``; default: ``cfg.split``."""
    return Training(cfg, split).run()

