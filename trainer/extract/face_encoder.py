"""HSEmotion's face expression encoders (Savchenko; Apache-2.0): EfficientNet ONNX models trained
on AffectNet, run through onnxruntime on the face crop of the OpenCV detector.

    face = HSEmotionFace("models/enet_b0_8_best_vgaf.onnx")   # a fresh tracker per clip
    vec = face(rgb)            # float32 [face.dim]: class scores, then the embedding if any
    face.close()

Input: the tracked, eye-levelled face crop of ``trainer.extract.face.OpenCVFace`` (brows to
chin), resized to the model's input side (read from the file: 224 for the B0 models, 260 for
B2), RGB scaled to [0, 1] and normalised with ImageNet's mean and standard deviation, NCHW
float32: the preprocessing of HSEmotion's own ``hsemotion-onnx`` package.

Output per frame: the first output's class scores (logits; 8 AffectNet classes Anger, Contempt,
Disgust, Fear, Happiness, Neutral, Sadness, Surprise, 7 without Contempt for ``*_7`` models, two
more for valence and arousal in ``*_mtl``), then every further 2-D output (the penultimate
embedding, where the file exposes it) in the file's order. The released files expose only the
scores; an export that also returns the pooled features gives both.

The user places the file (nothing is downloaded); ``params`` names it and its SHA-256.
"""

from __future__ import annotations

import multiprocessing
from functools import lru_cache
from pathlib import Path

import numpy as np

from trainer.extract.face import OpenCVFace

MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet, as HSEmotion's preprocessing
STD = np.array([0.229, 0.224, 0.225], np.float32)
CLASSES_8 = ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness",
             "Surprise")
CLASSES_7 = tuple(c for c in CLASSES_8 if c != "Contempt")


def check_face_model(path: str | None) -> Path:
    """The ``--face-model`` file, or a one-line ``ValueError``/``FileNotFoundError``."""
    if not path:
        raise ValueError("--video hsemotion needs --face-model FILE.onnx (HSEmotion's "
                         "enet_b0_8_best_vgaf.onnx or another of its ONNX models; see "
                         "docs/data.md); nothing is downloaded")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"no face model file {path}")
    return p.resolve()


@lru_cache(maxsize=2)
def _session(path: str):
    """One onnxruntime session per process and file (loading a model costs a fraction of a
    second; a clip's tracker is fresh, the model is not)."""
    try:
        import onnxruntime as ort  # onnxruntime (the extract extra): only for --video hsemotion
    except ImportError:
        raise ValueError("--video hsemotion needs onnxruntime: pip install onnxruntime (the "
                         "extract extra)") from None
    opts = ort.SessionOptions()
    if multiprocessing.parent_process() is not None:  # a pool worker: one core each
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's bad input
        raise ValueError(f"--face-model {path} is not a readable ONNX model "
                         f"({' '.join(str(e).split())[:160]})") from None


def _signature(sess, path: str) -> tuple[str, int, list[str], list[int]]:
    """Input name, input side, output names and widths; one line when the file does not look
    like an image classifier (NCHW RGB in, [N, C] scores out)."""
    inp = sess.get_inputs()[0]
    shape = list(inp.shape)
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"--face-model {path}: input {inp.name} has shape {shape}, not an RGB "
                         "image batch [N, 3, H, W]")
    h, w = shape[2], shape[3]
    if not isinstance(h, int) or not isinstance(w, int):  # a dynamic size: HSEmotion's rule
        h = w = 260 if "_b2_" in Path(path).name else 224
    if h != w:
        raise ValueError(f"--face-model {path}: input {h}x{w} is not square")
    names, widths = [], []
    for o in sess.get_outputs():
        if len(o.shape) == 2 and isinstance(o.shape[1], int):
            names.append(o.name)
            widths.append(int(o.shape[1]))
    if not names:
        raise ValueError(f"--face-model {path}: no [N, C] output (class scores)")
    return inp.name, int(h), names, widths


class HSEmotionFace:
    """The OpenCV face tracker's aligned crop through an HSEmotion ONNX model."""

    def __init__(self, model: str | None):
        path = str(check_face_model(model))
        self._sess = _session(path)
        self._input, self.size, self._outputs, widths = _signature(self._sess, path)
        self._face = OpenCVFace()
        self.dim = int(sum(widths))
        n = widths[0]
        classes = CLASSES_8 if n in (8, 10) else CLASSES_7 if n == 7 else None
        self.info = {"name": "hsemotion", "package": "onnxruntime",
                     "version": _ort_version(), "model": Path(path).name, "dim": self.dim,
                     "input": f"aligned face crop {self.size}x{self.size} RGB, ImageNet mean/std",
                     "detector": self._face.info["detector"],
                     "outputs": dict(zip(self._outputs, widths)),
                     "layout": "class scores (logits) of the first output, then the other "
                               "outputs (embedding) in order",
                     "classes": list(classes) + (["valence", "arousal"] if n == 10 else [])
                     if classes else None,
                     "source": path}  # where predict looks for it first (settings: its hash)

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        crop = self._face.crop(rgb, self.size)
        if crop is None:
            return None
        x = (crop.astype(np.float32) / 255.0 - MEAN) / STD
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])  # (1, 3, S, S)
        outs = self._sess.run(self._outputs, {self._input: x})
        return np.concatenate([np.asarray(o, np.float32).reshape(-1) for o in outs])

    def close(self) -> None:
        self._face.close()


def _ort_version() -> str:
    import onnxruntime as ort  # onnxruntime: loaded by _session already

    return ort.__version__
