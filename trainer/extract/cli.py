"""The ``extract`` verb of ``python -m trainer``: raw media to clip feature files.

    python -m trainer extract --media media/crema --out data/crema          # make extract
    python -m trainer extract --media media/ravdess --out data/ravdess --video opencv --workers 2
    python -m trainer extract --media s3://B/media/crema/ --out s3://B/data/crema/

Also the extract args of ``train --media`` (``parse_extract_args``) and the key that names
what they make (``settings_key``). Extraction's packages (PyAV, librosa, the face extractors)
load when a clip is extracted, not when this module is imported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from functools import partial

from trainer import logs
from trainer.errors import RaisingParser
from trainer.extract.run import extract
from trainer.extract.settings import ExtractSettings
from trainer.extract.speech import SPEECH_KINDS

DESCRIPTION = """\
Decode each clip (PyAV), resample its audio to 16 kHz mono and compute audio features at
100 frames/s; pick video frames at --video-rate by their true times, find the face in each
and compute face features; write one .npz per clip under --out, keeping the stem (and
Actor_NN/), with timestamps in seconds and the settings in its params. A frame without a
face is dropped, never zero-filled. Bad files are listed with their reason in
OUT/extract.json; clips already extracted with the same settings are skipped (resume).

Layouts: CREMA-D (VideoFlash/NAME.flv + AudioWAV/NAME.wav), RAVDESS (Actor_NN/01-*.mp4),
or any folder of videos with sound (labels from --manifest path,label,speaker[,split]).

Pretrained encoders (docs/data.md): --audio wavlm|hubert|wav2vec2 --audio-model DIR (MIT;
Apache-2.0), --video hsemotion --face-model FILE.onnx (Apache-2.0). They load from local
files; a hub id downloads only with --allow-download.

Licences: --audio egemaps and egemaps-functionals need the optional opensmile package
(audEERING's research-only licence): pip install 'av-emotion-trainer[egemaps]'.
--audio egemaps-functionals repeats one vector per clip at 100 frames/s: it carries no time
information (the original project's audio; for comparison only).

Examples:
  python -m trainer extract --media media/crema --out data/crema
  python -m trainer extract --media media/ravdess --out data/ravdess --video opencv
  python -m trainer extract --media media/crema --out data/crema-of --video openface \\
      --openface-csv openface/crema
  python -m trainer extract --media media/crema --out data/crema-wavlm --audio wavlm \\
      --audio-model models/wavlm-base-plus --video hsemotion \\
      --face-model models/enet_b0_8_best_vgaf.onnx
  python -m trainer extract --media s3://B/media/crema/ --out s3://B/data/crema/"""


def add_extract_command(sub, commands: dict) -> None:
    """Register ``extract`` on the subparsers ``sub`` and its handler in ``commands``."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("extract", help="raw media (CREMA-D, RAVDESS, videos) to clip files",
                       formatter_class=fmt, description=DESCRIPTION)
    p.add_argument("--media", required=True, metavar="PATH",
                   help="folder of media files, or s3://bucket/prefix (required)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="folder for the clip files and extract.json, or s3://bucket/prefix "
                   "(required)")
    p.add_argument("--audio", default="logmel",
                   choices=("logmel", "egemaps", "egemaps-functionals", *SPEECH_KINDS),
                   help="logmel (librosa), egemaps (25 eGeMAPSv02 LLDs, opensmile), "
                   "egemaps-functionals (88 functionals repeated: no time information), "
                   "wavlm, hubert, wav2vec2 (pretrained encoders, 50 frames/s, float16; need "
                   "--audio-model) (default: logmel)")
    p.add_argument("--audio-model", default=None, metavar="DIR",
                   help="the speech encoder's folder (config.json, weights, "
                   "preprocessor_config.json), an s3:// prefix, or with --allow-download a hub "
                   "id such as microsoft/wavlm-base-plus (default: none)")
    p.add_argument("--audio-layers", default=None, metavar="A-B",
                   help="mean of the speech encoder's layers A to B (0: its convolutional "
                   "features) (default: the upper-middle third, 7-10 of a base model's 12)")
    p.add_argument("--allow-download", action="store_true",
                   help="let --audio-model be a hub id, downloaded once into the Hugging Face "
                   "cache (default: local files only, no network)")
    p.add_argument("--video", default="mediapipe",
                   choices=("mediapipe", "opencv", "openface", "facenet", "hsemotion"),
                   help="mediapipe (face mesh geometry), opencv (bundled detectors), openface "
                   "(read --openface-csv), facenet (512-d, needs --face-weights), hsemotion "
                   "(HSEmotion ONNX on the opencv face crop, needs --face-model) "
                   "(default: mediapipe)")
    p.add_argument("--face-model", default=None, metavar="FILE",
                   help="HSEmotion ONNX file or s3:// object (--video hsemotion), e.g. "
                   "enet_b0_8_best_vgaf.onnx (default: none)")
    p.add_argument("--video-rate", type=float, default=15.0, metavar="FPS",
                   help="video frames per second at most, picked by true times (default: 15)")
    p.add_argument("--n-mels", type=int, default=64, metavar="N",
                   help="log-mel bands (default: 64)")
    p.add_argument("--min-face-frames", type=int, default=5, metavar="N",
                   help="skip a clip with fewer frames with a face (default: 5)")
    p.add_argument("--max-seconds", type=float, default=60.0, metavar="S",
                   help="skip a clip longer than this: its audio is held whole in memory "
                   "(default: 60)")
    p.add_argument("--openface-csv", default=None, metavar="DIR",
                   help="OpenFace FeatureExtraction CSVs, STEM.csv per clip (--video openface) "
                   "(default: none)")
    p.add_argument("--face-weights", default=None, metavar="FILE",
                   help="face model weights (--video facenet) (default: none)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="worker processes, each a child process, at most the cores this "
                   "process may use (default: 0 = all cores)")
    p.add_argument("--manifest", default=None, metavar="FILE",
                   help="CSV path,label,speaker[,split] naming the media files (default: "
                   "MEDIA/manifest.csv if present, else every file; labels from the names)")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="local cache for s3:// media and output (default: ~/.cache/av-emotion)")
    commands["extract"] = cmd_extract


def encoder_args(args) -> dict:
    """The pretrained encoders' flags as ExtractSettings fields."""
    return {"audio_model": args.audio_model, "audio_layers": args.audio_layers,
            "face_model": args.face_model, "allow_download": args.allow_download}


def cmd_extract(args) -> int:
    if args.workers < 0:
        raise ValueError("--workers must be 0 (all cores) or more")
    settings = ExtractSettings(audio=args.audio, video=args.video, video_rate=args.video_rate,
                               n_mels=args.n_mels, min_face_frames=args.min_face_frames,
                               max_seconds=args.max_seconds, openface_csv=args.openface_csv,
                               face_weights=args.face_weights, **encoder_args(args))
    logs.setup()
    try:  # isolate: a clip killed for memory takes only itself, even with one worker
        report = extract(args.media, args.out, settings, args.workers, args.manifest,
                         args.cache_dir, isolate=True)
    except KeyboardInterrupt:  # every clip file written so far is whole: a rerun resumes
        print("stopped: run the same command again to continue where it stopped",
              file=sys.stderr)
        return 130
    c = report["counts"]
    rate = report["timing"]["media_seconds_per_second"]
    print(f"extract: {c['written']} written, {c['already_done']} already done, "
          f"{c['skipped']} skipped (bad files and clips, each with its reason)"
          + (f", {c['excluded']} excluded (RAVDESS songs)" if c["excluded"] else "")
          + (f"; {rate:.1f} s of media per second" if rate else "")
          + f"  (report: {args.out.rstrip('/')}/extract.json)")
    if c["written"] + c["already_done"] == 0:
        top = report["skipped"][0]["reason"] if report["skipped"] else "no clips"
        print(f"error: no clip extracted ({top}; see extract.json)", file=sys.stderr)
        return 1
    return 0


# Extract flags that name a place on this machine: a deployed run could not read them.
LOCAL_FLAGS = ("--media", "--out", "--cache-dir", "--manifest", "--openface-csv",
               "--face-weights")


def parse_extract_args(text: str):
    """``--extract-args`` text to (ExtractSettings, workers); one-line ``ValueError`` if bad.

    The same flags and checks as ``python -m trainer extract``, minus the ones that name local
    paths (``LOCAL_FLAGS``): the media and the output are ``--media`` and ``--data``.

    Example:
        >>> parse_extract_args("--video opencv --workers 2")[0].video
        'opencv'
    """
    try:
        argv = shlex.split(text or "")
    except ValueError as e:
        raise ValueError(f"extract args {text!r} cannot be split into flags: {e}") from None
    local = [a for a in argv if a.split("=", 1)[0] in LOCAL_FLAGS]
    if local:
        raise ValueError(f"extract args: {local[0].split('=', 1)[0]} is not allowed here (the "
                         "media are --media, the clip files go to --data)")
    parser = RaisingParser("extract args", prog="extract args")
    add_extract_command(parser.add_subparsers(dest="verb", parser_class=partial(
        RaisingParser, "extract args")), {})
    args = parser.parse_args(["extract", "--media", "-", "--out", "-", *argv])
    if args.workers < 0:
        raise ValueError("extract args: --workers must be 0 (all cores) or more")
    s = ExtractSettings(audio=args.audio, video=args.video, video_rate=args.video_rate,
                        n_mels=args.n_mels, min_face_frames=args.min_face_frames,
                        max_seconds=args.max_seconds, **encoder_args(args))
    try:
        s.check()
    except ValueError as e:
        raise ValueError(f"extract args: {e}") from None
    return s, args.workers


def settings_key(text: str) -> str:
    """12 hex digits naming what the extract args make: the features' params and which clips
    are kept (``min_face_frames``, ``max_seconds``); other args (``--workers``) give the same
    key."""
    s, _ = parse_extract_args(text)
    kept = {"params": s.params(), "min_face_frames": s.min_face_frames}
    if s.max_seconds != ExtractSettings.max_seconds:  # the default keeps the keys made before it
        kept["max_seconds"] = s.max_seconds
    doc = json.dumps(kept, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:12]
