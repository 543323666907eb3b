"""trainer.extract.face on real photographs: scikit-image's astronaut (Eileen Collins, NASA,
public domain) and cameraman, placed on a plain wall, moved, scaled and rolled (numpy and
OpenCV only; nothing is encoded or downloaded). The real MediaPipe face mesh and OpenCV
cascades run.

    .venv/bin/python -m pytest tests/test_face.py -q
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from trainer.errors import MediaError
from trainer.extract.face import FACE_KINDS, make_face

cv2 = pytest.importorskip("cv2")
data = pytest.importorskip("skimage.data")

W, H = 480, 360  # CREMA-D's frame size
WALL = (96, 104, 112)
HEAD = data.astronaut()[0:250, 115:335]  # head and shoulders; eyes near row 100, chin near 177


def scene(patch: np.ndarray, x: int = 130, y: int = 50, scale: float = 1.0,
          roll: float = 0.0) -> np.ndarray:
    """``patch`` on the wall at (x, y), scaled and turned by ``roll`` degrees about its centre."""
    h, w = patch.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), roll, scale)
    m[:, 2] += (x, y)
    canvas = np.empty((H, W, 3), np.uint8)
    canvas[:] = WALL
    return cv2.warpAffine(patch, m, (W, H), dst=canvas, borderMode=cv2.BORDER_TRANSPARENT)


def open_mouth(head: np.ndarray, top: int = 136, bottom: int = 200) -> np.ndarray:
    """The same face with the mouth opened and the jaw dropped: everything below the nose
    stretched down by a third."""
    part = cv2.resize(head[top:bottom], (head.shape[1], int((bottom - top) * 1.35)))
    out = head.copy()
    out[top:] = np.concatenate([part, head[bottom:]])[:len(head) - top]
    return out


def other_face() -> np.ndarray:
    """Another person: scikit-image's cameraman, a grey photo, head and camera."""
    grey = data.camera()[0:200, 150:350]
    return cv2.resize(np.repeat(grey[:, :, None], 3, axis=2), None, fx=1.2, fy=1.2)


def one_frame(kind: str, rgb: np.ndarray) -> np.ndarray | None:
    """Features of a single frame from a fresh extractor (no tracking history)."""
    face = make_face(kind)
    try:
        return face(rgb)
    finally:
        face.close()


def test_an_unknown_kind_or_a_bad_frame_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown face features 'dlib': one of mediapipe"):
        make_face("dlib")
    face = make_face("opencv")
    with pytest.raises(MediaError, match="RGB uint8"):
        face(np.zeros((H, W), np.uint8))


@pytest.mark.parametrize("kind", ["mediapipe", "opencv"])
def test_the_moving_face_is_found_in_its_frames_and_nothing_without_one(kind):
    # A speaker drifting right, bobbing, growing and tilting (MediaPipe up to 20 degrees;
    # OpenCV's frontal cascade only sees near-upright faces), with a blank wall twice and
    # noise once, after which the face must be found again.
    roll = 20 if kind == "mediapipe" else 8
    frames = [scene(HEAD, x=60 + 8 * i, y=int(30 + 10 * np.sin(i / 4)), scale=0.8 + 0.015 * i,
                    roll=roll * np.sin(i / 3)) for i in range(24)]
    blank = np.full((H, W, 3), WALL, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    no_face = {8: blank, 9: blank, 16: noise}
    frames = [no_face.get(i, f) for i, f in enumerate(frames)]
    face = make_face(kind)
    out = [face(f) for f in frames]
    face.close()
    assert all(out[i] is None for i in no_face)
    found = [v for i, v in enumerate(out) if i not in no_face and v is not None]
    assert len(found) >= 20  # of 21 face frames
    assert all(v.shape == (face.dim,) and v.dtype == np.float32 and np.isfinite(v).all()
               for v in found)
    assert face.dim == {"mediapipe": 414, "opencv": 576}[kind] == face.info["dim"]
    assert face.info["name"] == kind and face.info["version"] != "unknown"


@pytest.mark.parametrize("kind", ["mediapipe", "opencv"])
def test_a_cat_or_coffee_is_not_a_face(kind):
    assert one_frame(kind, scene(data.chelsea()[0:250, 100:350], x=100, y=40)) is None
    assert one_frame(kind, scene(data.coffee()[60:320, 120:360], x=100, y=40)) is None


def test_mediapipe_geometry_is_normalised_for_position_scale_and_roll():
    face = make_face("mediapipe")
    index = face.landmarks
    base = face(scene(HEAD)).reshape(-1, 3)  # (138, 3): landmark, (x, y, z)
    face.close()
    # By construction: eye midpoint at the origin, eyes one unit apart on the x axis.
    right = base[[index.index(33), index.index(133)]].mean(0)
    left = base[[index.index(263), index.index(362)]].mean(0)
    np.testing.assert_allclose((left + right) / 2, 0, atol=1e-5)
    assert np.linalg.norm(left - right) == pytest.approx(1, abs=1e-5)
    assert abs(left[1] - right[1]) < 1e-5
    # The same face moved, made smaller or larger and tilted either way: the same features,
    # within the face mesh's own noise (a few percent).
    for moved in (scene(HEAD, x=40, y=90), scene(HEAD, scale=0.75),
                  scene(HEAD, scale=1.25, x=110, y=20), scene(HEAD, roll=15),
                  scene(HEAD, roll=-15, x=200)):
        v = one_frame("mediapipe", moved).reshape(-1, 3)
        assert np.linalg.norm(v - base) / np.linalg.norm(base) < 0.05


def test_mediapipe_features_tell_another_face_and_an_open_mouth():
    face = make_face("mediapipe")
    chin, upper, lower = (face.landmarks.index(i) for i in (152, 13, 14))  # mesh numbers
    face.close()
    base = one_frame("mediapipe", scene(HEAD)).reshape(-1, 3)
    other = one_frame("mediapipe", scene(other_face(), x=100, y=40)).reshape(-1, 3)
    assert np.linalg.norm(other - base) / np.linalg.norm(base) > 0.3
    # Mouth open, also when moved and tilted: the chin drops and the lips part, by far more
    # than the changes that position, scale and roll leave (under 0.035 of an eye distance).
    for opened in (scene(open_mouth(HEAD)), scene(open_mouth(HEAD), roll=10, scale=0.8)):
        v = one_frame("mediapipe", opened).reshape(-1, 3)
        assert v[chin, 1] - base[chin, 1] > 0.1
        assert (v[lower, 1] - v[upper, 1]) - (base[lower, 1] - base[upper, 1]) > 0.03


def test_opencv_features_change_with_expression_more_than_with_motion():
    # One clip: the face drifts and grows; after frame 10 the mouth opens.
    face = make_face("opencv")
    frames = [scene(HEAD if i < 10 else open_mouth(HEAD), x=100 + 3 * i, y=40 + i,
                    scale=0.9 + 0.01 * i) for i in range(20)]
    feats = np.stack([face(f) for f in frames])  # (20, 576)
    steps = np.linalg.norm(np.diff(feats, axis=0), axis=1)  # (19,): frame to frame
    motion = np.delete(steps, 9)
    assert steps[9] > 1.6 * motion.max()


def test_facenet_without_its_packages_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # absent, as on these machines
    with pytest.raises(ValueError) as err:
        make_face("facenet", weights="20180402-114759-vggface2.pt")
    msg = str(err.value)
    assert "\n" not in msg and "facenet-pytorch" in msg and "torchvision" in msg
    assert "facenet" in FACE_KINDS


@pytest.mark.parametrize("kind, module, install", [
    ("mediapipe", "mediapipe.python.solutions", "pip install --no-deps mediapipe==0.10.21"),
    ("opencv", "cv2", "pip install 'opencv-python-headless<5'")])
def test_a_missing_package_says_what_to_install(monkeypatch, kind, module, install):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ValueError) as err:
        make_face(kind)
    assert install in str(err.value) and "\n" not in str(err.value)
