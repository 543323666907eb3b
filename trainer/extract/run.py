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

import io
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import structlog
from tqdm import tqdm

from trainer import __version__
from trainer.data import (
    EXTRACTOR,
    MANIFEST_NAME,
    clip_params_json,
    write_manifest,
)
from trainer.errors import DataError, MediaError
from trainer.extract import encoders, staging
from trainer.extract.audio import audio_features
from trainer.extract.clips import SONG, MediaClip, display_path, find_clips
from trainer.extract.decode import at_rate, decode_audio, read_frames
from trainer.extract.face import make_face
from trainer.extract.openface import openface_csv, read_openface
from trainer.extract.places import check_places
from trainer.extract.pool import run_clips
from trainer.extract.resume import is_done, made_by, sha256_file
from trainer.extract.settings import ExtractSettings
from trainer.extract.speech import SPEECH_KINDS
from trainer.store.files import atomic_write_bytes as atomic_write
from trainer.store.s3uri import parse_s3_uri
from trainer.store.uri import cache_dir as default_cache
from trainer.store.uri import is_s3

log = structlog.get_logger()

REPORT = "extract.json"
STAGES = ("decode_audio", "audio_features", "decode_video", "face", "write")


def _openface(clip: MediaClip, s: ExtractSettings) -> tuple[np.ndarray, np.ndarray, dict]:
    csv = openface_csv(Path(s.openface_csv), clip.stem)
    if csv is None:
        raise MediaError(f"no OpenFace CSV {clip.stem}.csv in {s.openface_csv}")
    feats, times, columns = read_openface(csv)
    keep = at_rate(times, s.video_rate)  # the same rate rule as decoded video
    # The CSV's hash: a resume with another CSV folder redoes the clips whose CSVs differ.
    info = {"name": "openface", "package": "OpenFace 2.x FeatureExtraction CSV",
            "columns": columns, "min_confidence": 0.8, "csv_sha256": sha256_file(csv)}
    return feats[keep], times[keep], info


def _csv_sha256(clip: MediaClip, s: ExtractSettings) -> str | None:
    """The hash of the clip's OpenFace CSV as it is now (None: not ``--video openface``)."""
    if s.video != "openface":
        return None
    csv = openface_csv(Path(s.openface_csv), clip.stem)
    return sha256_file(csv) if csv is not None else "no CSV"


def _faces(clip: MediaClip, s: ExtractSettings, timing: dict) -> tuple[np.ndarray, np.ndarray,
                                                                        dict, int]:
    """Face features of the frames with a face, their times, the extractor's info, and the
    number of frames looked at."""

    face = _make_face(s)  # fresh per clip: it tracks within one clip
    frames = read_frames(clip.video, s.video_rate, s.max_seconds)
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
    decoded = decode_audio(clip.audio, s.sample_rate, s.max_seconds)
    wave = decoded.wave
    t1 = time.perf_counter()
    timing["media"] = len(wave) / s.sample_rate
    if s.audio in SPEECH_KINDS:
        audio, audio_t, audio_info = encoders.audio_encoder(s)(wave)
    else:
        audio, audio_t, audio_info = audio_features(wave, s.sample_rate, s.audio, s.n_mels)
    audio_t = audio_t + decoded.audio_start  # on the container's clock, as the video's times
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
    if reason is not None:  # a file of other settings, not this run's: it would be mixed in
        (out / f"{clip.rel}.npz").unlink(missing_ok=True)
    return {"rel": clip.rel, "reason": reason, "seconds": timing.pop("media", 0.0),
            "timing": timing}


def _progress(total: int):
    """tqdm on a terminal; otherwise None (log lines every 10 s carry the progress)."""
    if not sys.stderr.isatty():
        return None

    return tqdm(total=total, desc="extract", unit="clip", dynamic_ncols=True)


def _check_face(s: ExtractSettings) -> dict | None:
    """Make the face extractor once here, so a missing package or weights file is one line
    before any worker starts, not one skipped clip per file; its info (None for OpenFace)."""
    if s.video == "openface":
        return None
    face = _make_face(s)
    face.close()
    if s.audio in SPEECH_KINDS:  # loaded here too: a bad model folder is one line, not N skips
        encoders.audio_encoder(s)
    return face.info


def _make_face(s: ExtractSettings):
    if s.video == "hsemotion":
        return encoders.make_video(s)
    return make_face(s.video, s.face_weights)


def _write_manifest(out: Path, clips: list[MediaClip], kept: set[str]) -> None:
    """OUT/manifest.csv for clips a media manifest labelled, as trainer.data reads it."""

    rows = [(f"{c.rel}.npz", *c.row) for c in clips if c.row and c.rel in kept]
    if rows:
        write_manifest(out / MANIFEST_NAME, rows)


def extract(media: str | Path, out: str | Path, settings: ExtractSettings | None = None,
            workers: int = 0, manifest: str | Path | None = None,
            cache_dir: str | Path | None = None, isolate: bool = False) -> dict:
    """Extract every clip under ``media`` into ``out`` and write ``OUT/extract.json``.

    ``media`` and ``out`` may be ``s3://`` prefixes: the media are synced down into
    ``cache_dir`` (only what changed), the output is written in a local staging folder there
    (synced down first, so that resume sees what is done) and synced up at the end.

    ``workers`` is at most the CPUs this process may use (more is cut to that, with a warning).
    ``isolate`` runs even one worker in a child process, so that a clip the kernel kills for
    memory takes only itself, not the caller (the ``extract`` and ``train --media`` verbs).

    Returns:
        The report: ``written``, ``already_done`` (relative clip file paths), ``skipped``
        (``{"path", "reason"}``), ``excluded`` (RAVDESS songs, as skipped), ``counts``,
        ``settings``, ``seconds`` (wall) and ``timing`` (media seconds, media seconds per wall
        second, seconds per stage summed over workers).

    Raises:
        FileNotFoundError, ValueError, DataError, S3Error: bad arguments (one line), before any
        clip is read. A bad media file never raises: it is listed in ``skipped``.

    Example:
        >>> r = extract("media/ravdess", "data/ravdess", ExtractSettings(video="opencv"))
        >>> r["counts"]
        {'clips': 2880, 'written': 2871, 'already_done': 0, 'skipped': 9, 'excluded': 0}
    """
    s = settings or ExtractSettings()
    s.check()
    for uri in (media, out):  # a bad s3:// URI is one line before any work
        if is_s3(uri):
            parse_s3_uri(str(uri))
    t_start = time.perf_counter()
    cache = default_cache(cache_dir)
    check_places(str(media), str(out), manifest, cache)
    s = encoders.resolve(s, cache)  # s3:// models into the cache, a hub id downloaded if asked
    stage = dict.fromkeys(("s3_down", "find", *STAGES), 0.0)  # the upload comes after the report
    fingerprint = staging.media_fingerprint(str(media))  # the media as this run reads them
    local_media = staging.local_media(str(media), cache, stage)
    t0 = time.perf_counter()
    clips, skipped = find_clips(local_media, Path(manifest) if manifest else None)
    if not clips and not skipped:
        raise DataError(f"no media files under {media}")
    excluded = [x for x in skipped if x["reason"] == SONG]
    skipped = [x for x in skipped if x["reason"] != SONG]
    stage["find"] = time.perf_counter() - t0
    made = made_by(s.audio, _check_face(s))
    local_out = staging.local_out(str(out), cache, stage)  # nothing is written before this point
    params = s.params()
    done = [c for c in clips if is_done(local_out / f"{c.rel}.npz", params, made,
                                        s.min_face_frames, s.max_seconds, _csv_sha256(c, s))]
    done_rel = {c.rel for c in done}
    todo = [c for c in clips if c.rel not in done_rel]
    cpus = len(os.sched_getaffinity(0))
    if workers > cpus:
        log.warning("extract.workers_cut", asked=workers, using=cpus,
                    why="--workers is at most the CPUs this process may use")
    workers = min(workers or cpus, cpus)
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
                            opencv=s.video != "openface", isolate=isolate)
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
        "excluded": excluded,
        "counts": {"clips": len(clips), "written": len(written), "already_done": len(done),
                   "skipped": len(skipped), "excluded": len(excluded)},
        "settings": params, "min_face_frames": s.min_face_frames,
        "max_seconds": s.max_seconds, "workers": workers,
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
