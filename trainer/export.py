"""Export a trained model for inference outside the training code: TorchScript or ONNX.

    python -m trainer export --checkpoint runs/demo/checkpoints/best.pt --format onnx
    python -m trainer export --checkpoint runs/demo/checkpoints/best.pt --format torchscript \
        --out model.ts

The artifact takes the six inputs the eager model takes, for a batch padded to its longest clip:
    audio (B, T_a, F_a) float32, audio_mask (B, T_a) bool (True on real frames),
    audio_t (B, T_a) float32 (seconds), and the same three for video (B, T_v, ...).
B, T_a and T_v may change from call to call (dynamic axes). Features are given *prepared* as
the sidecar's ``preparation`` says: pooled to the model's frame rates, then standardised per
speaker (with the speaker's enrolment, ``trainer enroll``, whose ``fit`` key the sidecar names;
a speaker with none: the checkpoint's fallback) or per clip. Those steps read several frames,
or several clips, at once, which an artifact of one padded batch cannot see. The checkpoint's
train-set scaling after them is inside the artifact. The output is ``probabilities``
(B, n_classes), in the label order of the sidecar ``FILE.json``.

Both exporters go through the TorchScript tracer (``torch.jit.trace``, and the TorchScript-based
``torch.onnx.export(dynamo=False)``): in torch 2.13 the torch.export-based ONNX exporter fails to
decompose the CPU flash-attention kernel's output strides. Both are deprecated upstream but
work; the test checks the artifact against eager on clips of other lengths than the trace's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from trainer.batching import Normalizer, collate
from trainer.checkpoint import Trained, load_trained
from trainer.data import Clip
from trainer.enroll import fit_of
from trainer.ensemble import members
from trainer.store.files import atomic_write_text

INPUTS = ("audio", "audio_mask", "audio_t", "video", "video_mask", "video_t")
FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".ts", "onnx": ".onnx"}


class Exportable(nn.Module):
    """normalise -> model -> softmax, with positional inputs in INPUTS order."""

    def __init__(self, model: nn.Module, normalizer: Normalizer | None, modality: str = "both"):
        super().__init__()
        self.model, self.modality = model.eval(), modality
        n = normalizer
        for k in ("audio_mean", "audio_std", "video_mean", "video_std"):
            value = torch.from_numpy(getattr(n, k)) if n is not None else torch.tensor(
                1.0 if k.endswith("std") else 0.0)
            self.register_buffer(k, value.float())

    def forward(self, audio, audio_mask, audio_t, video, video_mask, video_t):
        # Zero padding after normalising, exactly as collate does for the eager model.
        audio = (audio - self.audio_mean) / self.audio_std * audio_mask.unsqueeze(-1).float()
        video = (video - self.video_mean) / self.video_std * video_mask.unsqueeze(-1).float()
        if self.modality == "audio":
            video = video * 0.0
        elif self.modality == "video":
            audio = audio * 0.0
        logits = self.model(audio=audio, audio_mask=audio_mask, audio_t=audio_t,
                            video=video, video_mask=video_mask, video_t=video_t)
        return torch.softmax(logits, -1)  # (B, n_classes)


def example_inputs(audio_dim: int, video_dim: int) -> tuple[torch.Tensor, ...]:
    """Two clips of different lengths to trace with (the lengths do not stay in the graph)."""
    rng = np.random.default_rng(0)

    def clip(t_a, t_v):
        return Clip("example", 0, "", rng.normal(size=(t_a, audio_dim)).astype(np.float32),
                    rng.normal(size=(t_v, video_dim)).astype(np.float32),
                    ((np.arange(t_a) + 0.5) / 100).astype(np.float32),
                    ((np.arange(t_v) + 0.5) / 30).astype(np.float32))

    batch = collate([clip(250, 75), clip(180, 54)])
    return tuple(batch[k] for k in INPUTS)


def export_model(model: nn.Module, fmt: str, out: str | Path, normalizer: Normalizer | None = None,
                 modality: str = "both", meta: dict | None = None) -> Path:
    """Write ``model`` (eager, trained) as a TorchScript or ONNX file and its sidecar JSON."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    first = members(model)[0]  # an ensemble's members all read the same inputs
    is_lstm = type(first).__name__ == "LSTMBaseline"
    if fmt == "onnx" and is_lstm:
        raise ValueError("the lstm baseline exports to torchscript only (packed sequences do "
                         "not export to ONNX with variable lengths); use --format torchscript")
    out = writable(out)
    wrapper = Exportable(model, normalizer, modality).eval()
    dims = (first.audio_in.in_features, first.video_in.in_features) if not is_lstm else (
        first.audio.lstm1.input_size, first.video.lstm1.input_size)
    args = example_inputs(*dims)
    tmp = out.with_name(f".{out.name}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notices; the test checks results
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(wrapper, args, check_trace=False), str(tmp))
        else:
            axes = {k: {0: "batch", 1: "t_audio" if k.startswith("audio") else "t_video"}
                    for k in INPUTS}
            torch.onnx.export(wrapper, args, str(tmp), dynamo=False, input_names=list(INPUTS),
                              output_names=["probabilities"], opset_version=17,
                              dynamic_axes=dict(axes, probabilities={0: "batch"}))
    tmp.replace(out)
    side = {"format": fmt, "inputs": {k: _describe(k, dims) for k in INPUTS},
            "output": "probabilities (B, n_classes), softmax over labels",
            "normalisation": "give features prepared as 'preparation' says (its steps, in "
                             "order); the train-set scaling is inside",
            "modality": modality, **(meta or {})}
    atomic_write_text(Path(str(out) + ".json"), json.dumps(side, indent=2) + "\n")
    return out


def writable(out: str | Path, make: bool = True) -> Path:
    """``out`` as a file path whose folder exists (made if need be, with ``make``).

    Raises:
        ValueError: one line, when ``out`` is a folder or a folder on its path is a file.
    """
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, e.g. {out / 'model.onnx'}")
    for parent in [out.parent, *out.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {out}: {parent} is a file, not a folder")
            break
    if make:
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _describe(name: str, dims: tuple[int, int]) -> str:
    t = "T_a" if name.startswith("audio") else "T_v"
    if name.endswith("_mask"):
        return f"bool (B, {t}), True on real frames"
    if name.endswith("_t"):
        return f"float32 (B, {t}), frame times in seconds"
    return f"float32 (B, {t}, {dims[0] if name == 'audio' else dims[1]})"


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Export a trainer checkpoint; ``out`` defaults to the checkpoint's name with .ts/.onnx."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    out = writable(out if out else Path(checkpoint).with_suffix(SUFFIX[fmt]), make=False)
    t = load_trained(checkpoint)
    meta = {"labels": t.labels, "model": t.checkpoint["model_name"], "prepare": t.prepare,
            "preparation": preparation(t), "model_settings": t.checkpoint["model_settings"],
            "checkpoint": str(checkpoint)}
    return export_model(t.model, fmt, out, t.normalizer, t.modality, meta)


def preparation(t: Trained) -> dict:
    """The sidecar's ``preparation``: what to do to a clip's features, in order, before the
    artifact (docs/training.md, Export)."""
    norm = t.prepare.get("norm", "none")
    fb = t.checkpoint.get("fallback")
    steps = [f"pool each stream to its rate (audio {t.prepare.get('audio_rate', 0.0)}/s, video "
             f"{t.prepare.get('video_rate', 0.0)}/s; 0: as stored): "
             "trainer.prepare.pool_clip(clip, prepare)",
             {"speaker": "standardise each feature with the speaker's statistics: "
                         "trainer.enroll.load_enrolment(FILE, trained)[speaker].stats(), from "
                         "an enrolment file whose fit key is enrolment_key; a speaker with none: "
                         "trainer.fallback.fallback_stats(checkpoint['fallback'], clip); apply "
                         "with trainer.prepare.standardise_clip(clip, stats)",
              "clip": "standardise each feature with the clip's own statistics: "
                      "trainer.prepare.standardise_clip(clip, trainer.prepare.clip_stats(clip))",
              "none": "no standardisation"}[norm],
             "the training split's scaling: inside the artifact"]
    out = {"norm": norm, "steps": steps}
    if norm == "speaker":
        out["enrolment_key"] = fit_of(t)["key"]
        out["fallback"] = {"method": fb["method"], "validation_macro_f1":
                           fb.get("validation_macro_f1")} if fb else None
    return out


def load_exported(path: str | Path, threads: int = 0) -> Callable[[dict], np.ndarray]:
    """A function from a batch (dict of tensors or arrays named as INPUTS) to probabilities."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort  # onnxruntime (the export extra): optional

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        return lambda batch: session.run(None, {k: np.asarray(batch[k]) for k in INPUTS
                                                if k in names})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
        module = torch.jit.load(str(path)).eval()

    def run(batch):
        with torch.inference_mode():
            return module(*(torch.as_tensor(np.asarray(batch[k])) for k in INPUTS)).numpy()
    return run
