"""Extraction runs: raw media to one clip feature file per clip (DESIGN.md sections 2 and 7).

    python -m trainer extract --media media/crema --out data/crema
    report = extract("media/crema", "data/crema", ExtractSettings(video="opencv"), workers=2)

Each clip: audio decoded to 16 kHz mono, then audio features at 100 frames per second; video
frames picked at ``video_rate`` by their true times, each through the face extractor; a frame
without a face is dropped (never zero-filled) and the kept frames keep their own times. A clip
with fewer than ``min_face_frames`` face frames, or a bad file, is skipped with its reason in
``OUT/extract.json``; the run never stops for one. Clips already extracted with the same
settings are skipped as done, so an interrupted run continues where it stopped. The worker
processes live in trainer.extract.pool, the ``s3://`` staging in trainer.extract.staging.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass, fields
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import structlog
from tqdm import tqdm

from trainer import __version__
from trainer.data import (
    EXTRACTOR,
    MANIFEST_NAME,
    clip_params_json,
    read_extraction,
    write_manifest,
)
from trainer.errors import DataError, MediaError
from trainer.extract import staging
from trainer.extract.audio import audio_features, check_audio_kind
from trainer.extract.clips import MediaClip, display_path, find_clips
from trainer.extract.decode import at_rate, read_audio, read_frames
from trainer.extract.face import make_face
from trainer.extract.openface import openface_csv, read_openface
from trainer.extract.pool import run_clips
from trainer.store.files import atomic_write_bytes as atomic_write
from trainer.store.s3uri import parse_s3_uri
from trainer.store.uri import cache_dir as default_cache
from trainer.store.uri import is_s3

log = structlog.get_logger()

VIDEO_KINDS = ("mediapipe", "opencv", "openface", "facenet")
REPORT = "extract.json"
STAGES = ("decode_audio", "audio_features", "decode_video", "face", "write")


@dataclass(frozen=True)
class ExtractSettings:
    """How clips are extracted; ``params()`` is what a clip file records and resume compares."""

    audio: str = "logmel"  # logmel | egemaps | egemaps-functionals (trainer.extract.audio)
    video: str = "mediapipe"  # mediapipe | opencv | facenet (trainer.extract.face) | openface
    video_rate: float = 15.0  # video frames per second at most, picked by their true times
    sample_rate: int = 16000  # audio is resampled to this, mono
    n_mels: int = 64  # log-mel bands (logmel only)
    min_face_frames: int = 5  # a clip with fewer frames with a face is skipped (1/3 s at 15 fps)
    openface_csv: str | None = None  # folder of OpenFace FeatureExtraction CSVs (openface only)
    face_weights: str | None = None  # weights file (facenet only)

    def check(self) -> None:
        """One-line ``ValueError`` for a bad value, before any clip is read."""

        check_audio_kind(self.audio)
        if self.video not in VIDEO_KINDS:
            raise ValueError(f"unknown video features {self.video!r}; use one of "
                             f"{', '.join(VIDEO_KINDS)}")
        for name in ("video_rate", "sample_rate", "n_mels"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.min_face_frames < 1:
            raise ValueError("--min-face-frames must be at least 1")
        if self.video == "openface":
            if not self.openface_csv:
                raise ValueError("--video openface needs --openface-csv DIR (OpenFace "
                                 "FeatureExtraction's CSVs, one STEM.csv per clip)")
            if not Path(self.openface_csv).is_dir():
                raise FileNotFoundError(f"no OpenFace CSV folder {self.openface_csv}")
        if self.face_weights and not Path(self.face_weights).is_file():
            raise FileNotFoundError(f"no face weights file {self.face_weights}")

    def params(self) -> dict:
        """The settings that define the features, without local paths: a weights file is named
        by its content's SHA-256, the OpenFace folder not at all (its CSVs are the features).
        ``min_face_frames`` decides which clips are kept, not what a clip's features mean."""
        p = {"audio": self.audio, "video": self.video, "video_rate": float(self.video_rate),
             "sample_rate": int(self.sample_rate)}
        if self.audio == "logmel":
            p["n_mels"] = int(self.n_mels)
        if self.face_weights:
            p["face_weights_sha256"] = _sha256(str(Path(self.face_weights).resolve()))
        return p

    @classmethod
    def from_params(cls, settings: dict) -> "ExtractSettings":
        """Settings from a clip file's ``params["settings"]`` (paths are given separately).

        Example:
            >>> ExtractSettings.from_params({"audio": "egemaps", "video": "opencv"}).video_rate
            15.0
        """
        names = {f.name for f in fields(cls)} - {"openface_csv", "face_weights"}
        return cls(**{k: v for k, v in settings.items() if k in names})


@lru_cache(maxsize=4)
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _openface(clip: MediaClip, s: ExtractSettings) -> tuple[np.ndarray, np.ndarray, dict]:
    csv = openface_csv(Path(s.openface_csv), clip.stem)
    if csv is None:
        raise MediaError(f"no OpenFace CSV {clip.stem}.csv in {s.openface_csv}")
    feats, times, columns = read_openface(csv)
    keep = at_rate(times, s.video_rate)  # the same rate rule as decoded video
    info = {"name": "openface", "package": "OpenFace 2.x FeatureExtraction CSV",
            "columns": columns, "min_confidence": 0.8}
    return feats[keep], times[keep], info


def _faces(clip: MediaClip, s: ExtractSettings, timing: dict) -> tuple[np.ndarray, np.ndarray,
                                                                        dict, int]:
    """Face features of the frames with a face, their times, the extractor's info, and the
    number of frames looked at."""

    face = make_face(s.video, s.face_weights)  # fresh per clip: it tracks within one clip
    frames = read_frames(clip.video, s.video_rate)
    feats, times, seen = [], [], 0
    try:
        while True:
            t0 = time.perf_counter()
            got = next(frames, None)
            t1 = time.perf_counter()
            timing["decode_video"] += t1 - t0
            if got is None:
                break
            seen += 1
            vec = face(got[1])
            timing["face"] += time.perf_counter() - t1
            if vec is not None:  # no face: the frame is dropped, the others keep their times
                feats.append(np.asarray(vec, np.float32))
                times.append(got[0])
        info = dict(face.info)
        dim = face.dim
    finally:
        frames.close()  # the container, also when the face extractor failed mid-clip
        face.close()
    return (np.stack(feats) if feats else np.zeros((0, dim), np.float32),
            np.asarray(times, np.float64), info, seen)


def _extract(clip: MediaClip, s: ExtractSettings, timing: dict) -> dict[str, np.ndarray]:
    """The clip file's arrays; adds the seconds spent per stage and the clip's audio seconds
    (``media``) to ``timing`` as it goes, so that a clip skipped late still counts its work."""

    t0 = time.perf_counter()
    wave = read_audio(clip.audio, s.sample_rate)
    t1 = time.perf_counter()
    timing["media"] = len(wave) / s.sample_rate
    audio, audio_t, audio_info = audio_features(wave, s.sample_rate, s.audio, s.n_mels)
    timing["decode_audio"], timing["audio_features"] = t1 - t0, time.perf_counter() - t1
    if s.video == "openface":
        t0 = time.perf_counter()
        video, video_t, video_info = _openface(clip, s)
        timing["decode_video"] = time.perf_counter() - t0
        if len(video) < s.min_face_frames:
            raise MediaError(f"{len(video)} usable OpenFace frames, fewer than --min-face-frames "
                             f"{s.min_face_frames}")
    else:
        video, video_t, video_info, seen = _faces(clip, s, timing)
        if len(video) < s.min_face_frames:
            raise MediaError(f"a face in {len(video)} of {seen} frames, fewer than "
                             f"--min-face-frames {s.min_face_frames}")
    params = {"extractor": EXTRACTOR, "version": __version__, "settings": s.params(),
              "audio": audio_info, "video": video_info}
    arrays = {"audio_features": audio, "video_features": video,
              "audio_timestamps": audio_t, "video_timestamps": video_t,
              "params": clip_params_json(params)}
    return arrays


def extract_clip(clip: MediaClip, s: ExtractSettings) -> dict[str, np.ndarray]:
    """The arrays of one clip file (``audio_features`` [T_a, F_a], ``video_features``
    [T_v, F_v], their ``*_timestamps`` in seconds, ``params`` JSON).

    Raises:
        MediaError: the reason this clip cannot be extracted (one line).

    Example:
        >>> arrays = extract_clip(media_clip(Path("clip.mp4")), ExtractSettings(video="opencv"))
        >>> arrays["audio_features"].shape, arrays["video_timestamps"][:2]
        ((348, 64), array([0.   , 0.067]))
    """
    return _extract(clip, s, dict.fromkeys(STAGES, 0.0))


def _work(clip: MediaClip, s: ExtractSettings, out: Path) -> dict:
    """One clip in a worker: extract and write it, or say why not. Never raises for a bad file."""
    timing = dict.fromkeys(STAGES, 0.0)
    try:
        arrays = _extract(clip, s, timing)
        t0 = time.perf_counter()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(out / f"{clip.rel}.npz", buf.getvalue())
        timing["write"] = time.perf_counter() - t0
        reason = None
    except MediaError as e:
        reason = str(e).splitlines()[0] if str(e) else "unreadable media"
    except Exception as e:  # a library's own error on odd input: reported, the run goes on
        reason = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return {"rel": clip.rel, "reason": reason, "seconds": timing.pop("media", 0.0),
            "timing": timing}


def _done(path: Path, settings: dict) -> bool:
    """A clip file already extracted with these settings (resume); any other file is redone."""

    if not path.is_file():
        return False
    params = read_extraction(path)
    return params is not None and params["settings"] == settings


def _progress(total: int):
    """tqdm on a terminal; otherwise None (log lines every 10 s carry the progress)."""
    if not sys.stderr.isatty():
        return None

    return tqdm(total=total, desc="extract", unit="clip", dynamic_ncols=True)


def _check_face(s: ExtractSettings) -> None:
    """Make the face extractor once here, so a missing package or weights file is one line
    before any worker starts, not one skipped clip per file."""
    if s.video == "openface":
        import trainer.extract.openface  # noqa: F401 - present, before the workers need it
        return

    make_face(s.video, s.face_weights).close()


def _write_manifest(out: Path, clips: list[MediaClip], kept: set[str]) -> None:
    """OUT/manifest.csv for clips a media manifest labelled, as trainer.data reads it."""

    rows = [(f"{c.rel}.npz", *c.row) for c in clips if c.row and c.rel in kept]
    if rows:
        write_manifest(out / MANIFEST_NAME, rows)


def extract(media: str | Path, out: str | Path, settings: ExtractSettings | None = None,
            workers: int = 0, manifest: str | Path | None = None,
            cache_dir: str | Path | None = None) -> dict:
    """Extract every clip under ``media`` into ``out`` and write ``OUT/extract.json``.

    ``media`` and ``out`` may be ``s3://`` prefixes: the media are synced down into
    ``cache_dir`` (only what changed), the output is written in a local staging folder there
    (synced down first, so that resume sees what is done) and synced up at the end.

    Returns:
        The report: ``written``, ``already_done`` (relative clip file paths), ``skipped``
        (``{"path", "reason"}``), ``counts``, ``settings``, ``seconds`` (wall) and ``timing``
        (media seconds, media seconds per wall second, seconds per stage summed over workers).

    Raises:
        FileNotFoundError, ValueError, DataError, S3Error: bad arguments (one line), before any
        clip is read. A bad media file never raises: it is listed in ``skipped``.

    Example:
        >>> r = extract("media/ravdess", "data/ravdess", ExtractSettings(video="opencv"))
        >>> r["counts"]
        {'clips': 2880, 'written': 2871, 'already_done': 0, 'skipped': 9}
    """
    s = settings or ExtractSettings()
    s.check()
    for uri in (media, out):  # a bad s3:// URI is one line before any work
        if is_s3(uri):
            parse_s3_uri(str(uri))
    t_start = time.perf_counter()
    cache = default_cache(cache_dir)
    stage = dict.fromkeys(("s3_down", "find", *STAGES), 0.0)  # the upload comes after the report
    fingerprint = staging.media_fingerprint(str(media))  # the media as this run reads them
    local_media = staging.local_media(str(media), cache, stage)
    t0 = time.perf_counter()
    clips, skipped = find_clips(local_media, Path(manifest) if manifest else None)
    if not clips and not skipped:
        raise DataError(f"no media files under {media}")
    stage["find"] = time.perf_counter() - t0
    _check_face(s)
    local_out = staging.local_out(str(out), cache, stage)  # nothing is written before this point
    params = s.params()
    done = [c for c in clips if _done(local_out / f"{c.rel}.npz", params)]
    done_rel = {c.rel for c in done}
    todo = [c for c in clips if c.rel not in done_rel]
    workers = workers or len(os.sched_getaffinity(0))
    log.info("extract.start", media=str(media), out=str(out), clips=len(clips),
             already_done=len(done), to_do=len(todo), reported=len(skipped), workers=workers,
             settings=params)

    by_rel = {c.rel: c for c in clips}
    written, media_seconds = [], 0.0
    bar, last_log = _progress(len(todo)), time.monotonic()
    t_work = time.perf_counter()
    uploader = staging.Uploader(local_out, str(out)) if is_s3(out) else None
    try:
        if uploader is not None:  # clip files go up as they finish, not only at the end
            uploader.start()
        results = run_clips(todo, partial(_work, s=s, out=local_out), local_out, workers,
                            opencv=s.video != "openface")
        for i, r in enumerate(results, 1):
            for k, v in r["timing"].items():
                stage[k] += v
            media_seconds += r["seconds"]
            if r["reason"] is None:
                written.append(r["rel"])
            else:
                skipped.append({"path": display_path(by_rel[r["rel"]].video, local_media),
                                "reason": r["reason"]})
            if bar is not None:
                bar.update()
            elif time.monotonic() - last_log > 10:
                log.info("extract.progress", clips=f"{i}/{len(todo)}", written=len(written),
                         skipped=len(skipped))
                last_log = time.monotonic()
    finally:
        if uploader is not None:
            uploader.stop()
        if bar is not None:
            bar.close()
    work_seconds = time.perf_counter() - t_work
    _write_manifest(local_out, clips, set(written) | done_rel)
    report = {
        "media": str(media), "media_fingerprint": fingerprint, "out": str(out),
        "written": sorted(f"{rel}.npz" for rel in written),
        "already_done": sorted(f"{rel}.npz" for rel in done_rel),
        "skipped": sorted(skipped, key=lambda x: x["path"]),
        "counts": {"clips": len(clips), "written": len(written), "already_done": len(done),
                   "skipped": len(skipped)},
        "settings": params, "min_face_frames": s.min_face_frames, "workers": workers,
        "seconds": 0.0,
        "timing": {"media_seconds": round(media_seconds, 3),
                   "extract_wall_seconds": round(work_seconds, 3),
                   "media_seconds_per_second": round(media_seconds / work_seconds, 3)
                   if todo and work_seconds > 0 else None,
                   "stage_seconds": {k: round(v, 3) for k, v in stage.items()},
                   "note": "stage_seconds of clip stages are summed over workers"},
    }
    report["seconds"] = round(time.perf_counter() - t_start, 3)
    atomic_write(local_out / REPORT, (json.dumps(report, indent=2) + "\n").encode())
    if is_s3(out):  # clips and manifest, then the report once they are there (its seconds
        # exclude this); a stop signal waits for it
        staging.uninterrupted(lambda: staging.publish(local_out, str(out), REPORT), "publish")
    log.info("extract.done", **report["counts"], seconds=report["seconds"])
    return report
