"""Face features of one video frame, tracked across the frames of one clip.

    from trainer.extract.face import make_face
    face = make_face("mediapipe")          # a fresh extractor per clip: it tracks within a clip
    vec = face(rgb)                         # float32 [face.dim], or None when no face is found
    face.close()

Three kinds (``FACE_KINDS``); the first two use models that ship inside their pip wheels, so
nothing is downloaded:

- ``mediapipe`` (Apache-2.0; MediaPipe 0.10.21, the last wheel with the face mesh ``solutions``
  API): the face mesh in video mode, which tracks the face from frame to frame. Features are
  landmark geometry, 414 = 138 landmarks x (x, y, z): the contours of lips, eyes, eyebrows and
  face oval (MediaPipe's ``FACEMESH_CONTOURS``, 128 points) and the 10 iris points, normalised
  for position (origin between the eye centres), scale (divided by the inter-ocular distance)
  and roll (the eye line turned horizontal). Pitch and yaw are kept: nods and head turns carry
  emotion, and the contours carry the expression.
- ``opencv`` (Apache-2.0; OpenCV's bundled Haar cascades, ``cv2.data``): the frontal-face cascade
  finds the face, then searches only near the last box (tracking) with the box smoothed; the eye
  cascade places the crop (centred below the eyes, 2.4 eye distances wide) and gives the roll,
  tracked relative to the box for frames where it misses the eyes. Features are the HOG (histograms of oriented gradients) of the aligned
  64x64 grey face, 576 = 4x4 blocks x 4 cells x 9 orientations: HOG of the aligned face is what
  OpenFace's own action-unit models read, since wrinkles, brows, eyelids and mouth shape change
  the gradients while lighting mostly does not. Finds upright, near-frontal faces (roll within
  about 15 degrees).
- ``facenet`` (the original project's features; MIT, facenet-pytorch): MTCNN then
  InceptionResnetV1 (VGGFace2), 512-d, from the weights file ``--face-weights FILE`` (the
  ``20180402-114759-vggface2.pt`` state dict); nothing is downloaded. Needs facenet-pytorch and a
  torchvision built for our torch, which cannot be installed beside torch 2.13 CPU here.
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Protocol

import numpy as np

from trainer.errors import MediaError
from trainer.extract.native_stderr import quiet_native_stderr

FACE_KINDS = ("mediapipe", "opencv", "facenet")
MEDIAPIPE_VERSION = "0.10.21"


class Face(Protocol):
    dim: int
    info: dict

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None: ...

    def close(self) -> None: ...


def make_face(kind: str, weights: str | None = None) -> Face:
    """A fresh, stateful (tracking) face extractor for ONE clip.

    Raises:
        ValueError: an unknown kind, or a missing optional package (the line says what to
            install) or weights file.
        MediaError: the extractor's model cannot be loaded.

    Example:
        >>> face = make_face("opencv")
        >>> face.dim, face(np.zeros((360, 480, 3), np.uint8))
        (576, None)
    """
    if kind == "mediapipe":
        return MediaPipeFace()
    if kind == "opencv":
        return OpenCVFace()
    if kind == "facenet":
        return FaceNetFace(weights)
    raise ValueError(f"unknown face features {kind!r}: one of {', '.join(FACE_KINDS)}")


def _rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise MediaError(f"a frame must be RGB uint8 (H, W, 3), not {rgb.dtype} {rgb.shape}")
    return np.ascontiguousarray(rgb)


# --- mediapipe: face mesh geometry -----------------------------------------------------------

# Eye corners in MediaPipe's mesh (the subject's right eye is on the image's left).
_RIGHT_EYE, _LEFT_EYE = (33, 133), (263, 362)
_IRIS = tuple(range(468, 478))  # two centres and eight rim points, with refine_landmarks


def normalise_landmarks(points: np.ndarray) -> np.ndarray:
    """Landmarks [N, 3] in pixels (x, y, and MediaPipe's z in x's scale) without position,
    scale and roll: origin between the eye centres, unit inter-ocular distance, eye line along x.

    Example:
        >>> pts = np.random.rand(478, 3)
        >>> moved = pts * 2 + 5
        >>> np.allclose(normalise_landmarks(pts), normalise_landmarks(moved))
        True
    """
    right = points[list(_RIGHT_EYE)].mean(0)
    left = points[list(_LEFT_EYE)].mean(0)
    centred = points - (left + right) / 2  # (N, 3)
    # 3-D distance: a head turn shortens the eye line on screen but not in the mesh.
    scale = float(np.linalg.norm(left - right))
    if scale < 1e-6:
        raise MediaError("degenerate face landmarks (the eyes coincide)")
    dx, dy = (left - right)[:2]
    c, s = np.cos(np.arctan2(dy, dx)), np.sin(np.arctan2(dy, dx))
    x, y = centred[:, 0], centred[:, 1]
    out = np.stack([c * x + s * y, -s * x + c * y, centred[:, 2]], axis=1)  # roll undone
    return out / scale


class MediaPipeFace:
    """MediaPipe face mesh in video mode; features: normalised contour and iris geometry."""

    def __init__(self):
        try:
            with quiet_native_stderr():
                from mediapipe.python.solutions import face_mesh  # mediapipe
        except ImportError as e:
            raise ValueError(f"--video mediapipe needs mediapipe {MEDIAPIPE_VERSION} (`make setup`"
                             f" installs it: pip install --no-deps mediapipe=={MEDIAPIPE_VERSION}"
                             f"): {e}") from None
        # The mesh's landmark numbers in feature order: feature 3k..3k+2 is landmarks[k]'s x, y, z.
        self.landmarks = sorted({i for edge in face_mesh.FACEMESH_CONTOURS for i in edge}) + \
            list(_IRIS)
        self.dim = 3 * len(self.landmarks)
        with quiet_native_stderr(), warnings.catch_warnings():
            # MediaPipe 0.10.21 was built for protobuf 4; protobuf 6 deprecates a call it makes.
            warnings.simplefilter("ignore", DeprecationWarning)
            # Video mode: the detector runs only when tracking is lost; landmarks of the last
            # frame give the next frame's region of interest.
            self._mesh = face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1,
                                            refine_landmarks=True, min_detection_confidence=0.5,
                                            min_tracking_confidence=0.5)
            # The graph's threads open its models (and print) after the constructor returns;
            # one blank frame waits for that inside the quiet spell. No face: no tracking state.
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))
        self._first = True  # the landmark model first runs (and prints) on the first face
        self.info = {"name": "mediapipe", "package": "mediapipe", "version": _version("mediapipe"),
                     "model": "face_mesh (refine_landmarks: iris)", "dim": self.dim,
                     "min_detection_confidence": 0.5, "min_tracking_confidence": 0.5,
                     "landmarks": len(self.landmarks),
                     "layout": "FACEMESH_CONTOURS (sorted) then iris 468-477; x, y, z each",
                     "normalised": "origin eye midpoint, scale inter-ocular distance, roll 0"}

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        rgb = _rgb(rgb)
        if self._first:
            with quiet_native_stderr():
                result = self._mesh.process(rgb)
            self._first = not result.multi_face_landmarks
        else:
            result = self._mesh.process(rgb)
        if not result.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        lm = result.multi_face_landmarks[0].landmark
        # MediaPipe's x, y are fractions of width and height; z is in x's scale.
        points = np.array([(p.x * w, p.y * h, p.z * w) for p in lm], np.float64)  # (478, 3)
        return normalise_landmarks(points)[self.landmarks].reshape(-1).astype(np.float32)

    def close(self) -> None:
        self._mesh.close()


# --- opencv: Haar cascades, HOG of the aligned face -----------------------------------------

_CROP = 64  # the aligned face's side in pixels


class OpenCVFace:
    """OpenCV Haar face and eye cascades, a tracked and smoothed box, HOG of the aligned face."""

    SMOOTH = 0.5  # weight of the new detection in the tracked box (the rest: the last box)

    def __init__(self):
        try:
            import cv2  # OpenCV (the extract extra): loaded where faces are found
        except ImportError:
            raise ValueError("--video opencv needs OpenCV: pip install "
                             "'opencv-python-headless<5' (the extract extra)") from None
        self._cv2 = cv2
        root = Path(cv2.data.haarcascades)
        self._faces = cv2.CascadeClassifier(str(root / "haarcascade_frontalface_default.xml"))
        self._eye_cascade = cv2.CascadeClassifier(str(root / "haarcascade_eye.xml"))
        if self._faces.empty() or self._eye_cascade.empty():
            raise MediaError(f"OpenCV {cv2.__version__} has no Haar cascades in {root} "
                             "(the 5.x wheels dropped them; install opencv-python-headless<5)")
        # 64x64 window, 16x16 blocks without overlap, 8x8 cells, 9 bins: 4*4*4*9 = 576.
        self._hog = cv2.HOGDescriptor((_CROP, _CROP), (16, 16), (16, 16), (8, 8), 9)
        self.dim = int(self._hog.getDescriptorSize())
        self._box: np.ndarray | None = None  # tracked (cx, cy, side) in pixels
        # The aligned crop relative to the face box: centre offset (x, y) and side in box sides,
        # roll in degrees; from the eyes, tracked.
        self._rel: np.ndarray | None = None
        self.info = {"name": "opencv", "package": "opencv-python-headless",
                     "version": cv2.__version__, "dim": self.dim,
                     "detector": "haarcascade_frontalface_default + haarcascade_eye",
                     "features": f"HOG of the aligned {_CROP}x{_CROP} grey face (16px blocks, "
                                 "8px cells, 9 bins)"}

    def _detect(self, grey: np.ndarray) -> np.ndarray | None:
        """The face box (cx, cy, side): near the tracked box when there is one, else anywhere."""
        h, w = grey.shape
        if self._box is not None:  # tracking: a window twice the face's size, a similar size
            cx, cy, side = self._box
            x0, y0 = int(max(0, cx - side)), int(max(0, cy - side))
            x1, y1 = int(min(w, cx + side)), int(min(h, cy + side))
            # Searched with the face at about 64 px: the cascade's 24 px window needs no more.
            roi, f = self._shrink(grey[y0:y1, x0:x1], 64 / side)
            found = self._faces.detectMultiScale(roi, 1.1, 4, minSize=(int(side * f * 0.7),) * 2,
                                                 maxSize=(int(side * f * 1.4),) * 2)
            if len(found):
                return _largest(found, x0, y0, f)
        # Anywhere: at half size when the frame is large, for speed (faces of 60 px and up).
        small, f = self._shrink(grey, 0.5 if min(h, w) >= 240 else 1.0)
        found = self._faces.detectMultiScale(small, 1.1, 5, minSize=(30, 30))
        return _largest(found, 0, 0, f) if len(found) else None

    def _shrink(self, grey: np.ndarray, f: float) -> tuple[np.ndarray, float]:
        """``grey`` resized by ``f`` when that makes it smaller (cascades cost per pixel)."""
        if f >= 1.0:
            return grey, 1.0
        return self._cv2.resize(grey, None, fx=f, fy=f, interpolation=self._cv2.INTER_AREA), f

    def _eyes(self, grey: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float, float] | None:
        """The two eyes in the face's upper half: their midpoint (x, y), distance and angle
        (degrees), or None when the eye cascade does not find a plausible pair."""
        cx, cy, side = box
        x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        top = grey[y0:int(cy + side * 0.05), x0:int(cx + side / 2)]
        if top.size == 0:
            return None
        top, f = self._shrink(top, 120 / side)  # eyes of about 24 px: the cascade's 20 px window
        eyes = self._eye_cascade.detectMultiScale(top, 1.1, 4,
                                                  minSize=(int(side * f * 0.12),) * 2,
                                                  maxSize=(int(side * f * 0.4),) * 2)
        if len(eyes) < 2:
            return None
        eyes = sorted(eyes, key=lambda e: -e[2] * e[3])[:2]
        (ax, ay), (bx, by) = [(x0 + (x + ew / 2) / f, y0 + (y + eh / 2) / f)
                              for x, y, ew, eh in eyes]
        if ax > bx:
            ax, ay, bx, by = bx, by, ax, ay
        dist, angle = float(np.hypot(bx - ax, by - ay)), float(np.degrees(np.arctan2(by - ay,
                                                                                     bx - ax)))
        if dist < side * 0.2 or abs(angle) > 30:  # one eye twice, or not an eye pair
            return None
        return np.array([(ax + bx) / 2, (ay + by) / 2]), dist, angle

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        cv2 = self._cv2
        grey = cv2.cvtColor(_rgb(rgb), cv2.COLOR_RGB2GRAY)
        m = self._align(grey, _CROP)
        if m is None:
            return None
        crop = cv2.warpAffine(grey, m, (_CROP, _CROP), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_REPLICATE)
        crop = cv2.equalizeHist(crop)  # lighting and contrast out
        return self._hog.compute(crop).reshape(-1).astype(np.float32)

    def crop(self, rgb: np.ndarray, size: int) -> np.ndarray | None:
        """The aligned face as RGB uint8 (size, size, 3): the same tracked, eye-levelled crop
        (brows to chin) the HOG features read, for a face encoder; None without a face."""
        cv2 = self._cv2
        rgb = _rgb(rgb)
        m = self._align(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), size)
        if m is None:
            return None
        shrink = m[0, 0] ** 2 + m[0, 1] ** 2 < 1  # the face is larger than the crop
        return cv2.warpAffine(rgb, m, (size, size), borderMode=cv2.BORDER_REPLICATE,
                              flags=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)

    def _align(self, grey: np.ndarray, size: int) -> np.ndarray | None:
        """The affine map from the frame to the aligned ``size`` x ``size`` face (tracking
        state updated), or None when no face is found."""
        cv2 = self._cv2
        box = self._detect(grey)
        if box is None:
            self._box = None  # lost: search the whole frame next time
            return None
        if self._box is not None:
            box = self.SMOOTH * box + (1 - self.SMOOTH) * self._box  # less jitter in the crop
        self._box = box
        eyes = self._eyes(grey, box)
        if eyes is not None:
            # The crop from the eyes: centred half an eye distance below them, 2.4 eye distances
            # wide (brows to chin). Kept relative to the face box, so that frames where the eye
            # cascade misses still crop the same way.
            mid, dist, angle = eyes
            a = np.radians(angle)
            centre = mid + 0.5 * dist * np.array([-np.sin(a), np.cos(a)])
            rel = np.array([*(centre - box[:2]) / box[2], 2.4 * dist / box[2], angle])
            first = self._rel is None
            self._rel = rel if first else self.SMOOTH * rel + (1 - self.SMOOTH) * self._rel
        rel = self._rel if self._rel is not None else np.array([0.0, 0.0, 1.0, 0.0])
        cx, cy = box[:2] + rel[:2] * box[2]
        side, roll = rel[2] * box[2], rel[3]
        # Rotate about the face's centre so the eyes are level, scale the face to the crop.
        m = cv2.getRotationMatrix2D((float(cx), float(cy)), float(roll), size / float(side))
        m[:, 2] += (size / 2 - cx, size / 2 - cy)
        return m

    def close(self) -> None:
        self._box = None


def _largest(found: np.ndarray, x0: int, y0: int, f: float) -> np.ndarray:
    x, y, w, h = max(found, key=lambda b: b[2] * b[3])
    """The largest box found in an image shrunk by ``f`` whose corner is (x0, y0) in the frame,
    as (cx, cy, side) in frame pixels."""
    return np.array([x0 + (x + w / 2) / f, y0 + (y + h / 2) / f, w / f], np.float64)


# --- facenet: the original project's 512-d embeddings ---------------------------------------

FACENET_INSTALL = ("--video facenet needs facenet-pytorch and a torchvision built for this torch"
                   " (pip install facenet-pytorch torchvision --no-deps, matching torch's "
                   "version), which cannot be installed beside the torch 2.13 CPU build here")


class FaceNetFace:
    """MTCNN (its weights ship in facenet-pytorch) then InceptionResnetV1 from ``weights``."""

    dim = 512

    def __init__(self, weights: str | None):
        try:
            import torch  # torch: only for --video facenet (extract workers run without it)
            from facenet_pytorch import MTCNN, InceptionResnetV1  # optional; pins an older torch
        except (ImportError, RuntimeError):  # RuntimeError: a torchvision built for other torch
            raise ValueError(FACENET_INSTALL) from None
        if not weights:
            raise ValueError("--video facenet needs --face-weights FILE (InceptionResnetV1 "
                             "VGGFace2 state dict, 20180402-114759-vggface2.pt); nothing is "
                             "downloaded")
        if not Path(weights).is_file():
            raise FileNotFoundError(f"no face weights file {weights}")
        self._torch = torch
        # The original project's settings: one face, 160x160, MTCNN's default margin.
        self._mtcnn = MTCNN(image_size=160, keep_all=False, device="cpu")
        self._model = InceptionResnetV1(pretrained=None, classify=False).eval()
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's bad input
            raise MediaError(f"cannot read face weights {weights}: {e}") from None
        # The released file also has the VGGFace2 classifier ('logits.*'), unused for embeddings.
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
        missing, unexpected = self._model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise MediaError(f"{weights} is not an InceptionResnetV1 state dict (missing "
                             f"{len(missing)}, unexpected {len(unexpected)} keys)")
        self.info = {"name": "facenet", "package": "facenet-pytorch",
                     "version": _version("facenet-pytorch"), "dim": self.dim,
                     "model": "MTCNN + InceptionResnetV1", "weights": Path(weights).name}

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        with self._torch.inference_mode():
            crop = self._mtcnn(_rgb(rgb))  # (3, 160, 160) or None
            if crop is None:
                return None
            return self._model(crop[None]).reshape(-1).numpy().astype(np.float32)  # (512,)

    def close(self) -> None:
        pass


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
