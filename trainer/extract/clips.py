"""Finding clips in raw media, in the layouts the data sets ship (DESIGN.md section 7).

- CREMA-D: ``VideoFlash/NAME.flv`` whose audio is ``AudioWAV/NAME.wav`` (same stem).
- RAVDESS: ``Actor_NN/01-....mp4``, audio and video in one file; its video-only (``02-``) and
  audio-only (``03-``) files are reported as such, and its songs (vocal channel 02,
  ``01-02-...``), which unpack into the same folders, are excluded and counted (``SONG``):
  the labels and the models are for speech. A manifest row naming a song is extracted.
- Any folder of video files with an audio track; with a manifest ``path,label,speaker[,split]``
  (as the trainer reads it: ``--manifest FILE``, or ``manifest.csv`` in the folder) only the
  files it lists, whose labels and speakers then go to the output's own manifest.

    clips, skipped = find_clips(Path("media/crema"))
    clip = media_clip(Path("clip.mp4"))          # one file given on the command line (predict)

Each clip's output path ``rel`` keeps the stem and the sub-folders (``Actor_12/...``) that may
carry the speaker; CREMA-D's ``VideoFlash`` folder is dropped (the stem carries the speaker). A
file outside the media folder (a manifest row ``../other/clip.mp4`` or an absolute path) writes
``OUT/STEM.npz``: no ``rel`` ever leads out of the output folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from trainer.data import RAVDESS_SONG, parse_name, read_manifest
from trainer.errors import MediaError

VIDEO_EXTENSIONS = {".flv", ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg",
                    ".wmv"}
AUDIO_EXTENSIONS = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac"}
# Companions that ship beside media (CREMA-D's tabulated ratings, READMEs): not clips, not
# reported; any other unknown file is reported as unsupported.
IGNORED_EXTENSIONS = {".csv", ".tsv", ".txt", ".md", ".json", ".pdf", ".xlsx", ".xls", ".npz",
                      ".log"}
RAVDESS_NAME = re.compile(r"^(\d\d)-\d\d-\d\d-\d\d-\d\d-\d\d-\d\d$")  # modality first
RAVDESS_ONE_STREAM = {"02": "RAVDESS video-only file (modality 02): it has no audio",
                      "03": "RAVDESS audio-only file (modality 03): it has no video"}
MANIFEST_NAME = "manifest.csv"  # as trainer.data's
# The reason a RAVDESS song is listed under ``excluded`` (not a bad file: counted apart).
SONG = "RAVDESS song (vocal channel 02): excluded, the labels are for speech"


@dataclass(frozen=True)
class MediaClip:
    """One clip to extract: its video, its audio (the same file for an MP4 with sound) and the
    output path ``rel`` (relative to OUT, without ``.npz``). ``row`` is its manifest row's
    ``(label, speaker, split)`` when a manifest named it."""

    stem: str
    video: Path | None
    audio: Path | None
    rel: str
    row: tuple[str, str, str] | None = None


def _crema_wav(flv: Path) -> Path | None:
    """CREMA-D's WAV of ``VideoFlash/NAME.flv``: ``AudioWAV/NAME.wav`` beside the folder, or
    ``NAME.wav`` beside the file."""
    for wav in (flv.parent.parent / "AudioWAV" / f"{flv.stem}.wav", flv.with_suffix(".wav")):
        if wav.is_file():
            return wav
    return None


def _one_stream_reason(path: Path) -> str | None:
    if parse_name(path.stem) == RAVDESS_SONG:
        return SONG
    m = RAVDESS_NAME.match(path.stem)
    return RAVDESS_ONE_STREAM.get(m.group(1)) if m else None


def _rel(path: Path, root: Path) -> str:
    """Output path of ``path`` relative to OUT: its sub-folders and stem, less ``VideoFlash``.
    Both are made absolute and ``..`` folded first (lexically, as the file was named), so a
    path that leaves ``root`` (``root/../x.mp4``) is outside it: then only the stem."""
    path, root = (Path(os.path.normpath(Path(p).absolute())) for p in (path, root))
    try:
        parts = path.relative_to(root).with_suffix("").parts
    except ValueError:  # a manifest row outside the media folder
        parts = (path.stem,)
    return "/".join([p for p in parts[:-1] if p != "VideoFlash"] + [parts[-1]])


def _clip(video: Path, root: Path, row=None, named: bool = False) -> MediaClip | str:
    """The clip of one video file, or the reason it cannot be one. A song is excluded only when
    found in a folder: a manifest row or a file given by name (``named``) means it on purpose."""
    reason = _one_stream_reason(video)
    if reason == SONG and (row is not None or named):
        reason = None
    if reason:
        return reason
    if video.suffix.lower() == ".flv":
        wav = _crema_wav(video)
        if wav is None:
            return f"FLV without its WAV (no AudioWAV/{video.stem}.wav nor {video.stem}.wav)"
        return MediaClip(video.stem, video, wav, _rel(video, root), row)
    return MediaClip(video.stem, video, video, _rel(video, root), row)


def _with_manifest(root: Path, manifest: Path) -> tuple[list[MediaClip], list[dict]]:
    clips, skipped = [], []
    base = manifest.parent
    for r in read_manifest(manifest):
        path = Path(r["path"].strip())
        path = path if path.is_absolute() else base / path
        shown = r["path"].strip()
        row = (r["label"].strip(), r["speaker"].strip(), (r.get("split") or "").strip())
        if not path.is_file():
            skipped.append({"path": shown, "reason": f"manifest line {r['line']}: no such file"})
        elif path.suffix.lower() not in VIDEO_EXTENSIONS:
            skipped.append({"path": shown, "reason": f"manifest line {r['line']}: not a video "
                            f"file ({path.suffix or 'no extension'})"})
        else:
            got = _clip(path, root if _inside(path, root) else base, row)
            if isinstance(got, str):
                skipped.append({"path": shown, "reason": got})
            else:
                clips.append(got)
    return clips, skipped


def find_clips(media: Path, manifest: Path | None = None) -> tuple[list[MediaClip], list[dict]]:
    """The clips under ``media`` and the files that cannot be clips, as ``{"path", "reason"}``
    (paths relative to ``media``), both sorted by path.

    Raises:
        FileNotFoundError: ``media`` (or ``manifest``) does not exist.
        DataError: a malformed manifest.

    Example:
        >>> clips, skipped = find_clips(Path("media/crema"))
        >>> clips[0].rel, clips[0].audio.name, skipped[0]["reason"]
        ('1001_DFA_ANG_XX', '1001_DFA_ANG_XX.wav', 'FLV without its WAV (...)')
    """
    media = Path(media)
    if not media.is_dir():
        raise FileNotFoundError(f"no media folder {media}")
    if manifest is None and (media / MANIFEST_NAME).is_file():
        manifest = media / MANIFEST_NAME
    if manifest is not None:
        if not Path(manifest).is_file():
            raise FileNotFoundError(f"no manifest {manifest}")
        clips, skipped = _with_manifest(media, Path(manifest))
    else:
        clips, skipped = _walk(media)
    # Two media files that would write one output (clip.mp4 and clip.avi): the first one wins.
    seen: dict[str, MediaClip] = {}
    for c in list(clips):
        if c.rel in seen:
            clips.remove(c)
            skipped.append({"path": display_path(c.video, media), "reason": "same output "
                            f"{c.rel}.npz as {display_path(seen[c.rel].video, media)}"})
        else:
            seen[c.rel] = c
    return clips, sorted(skipped, key=lambda s: s["path"])


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is under ``root`` once ``..`` is folded (``root/../x`` is not)."""
    path, root = (Path(os.path.normpath(Path(p).absolute())) for p in (path, root))
    return path.is_relative_to(root)


def display_path(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _walk(media: Path) -> tuple[list[MediaClip], list[dict]]:
    files = sorted(p for p in media.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(media).parts))
    clips, skipped, audio = [], [], []
    for path in files:
        ext = path.suffix.lower()
        if ext in VIDEO_EXTENSIONS:
            got = _clip(path, media)
            if isinstance(got, str):
                skipped.append({"path": display_path(path, media), "reason": got})
            else:
                clips.append(got)
        elif ext in AUDIO_EXTENSIONS:
            audio.append(path)
        elif ext not in IGNORED_EXTENSIONS:
            skipped.append({"path": display_path(path, media),
                            "reason": f"unsupported file type ({ext or 'no extension'})"})
    # An audio file is a clip's audio, or a copy of it (CREMA-D's AudioMP3), or reported.
    stems = {c.stem for c in clips} | {p.stem for p in files if p.suffix.lower() == ".flv"}
    for path in audio:
        if path.stem not in stems:
            skipped.append({"path": display_path(path, media), "reason": _one_stream_reason(path)
                            or "audio without a video of the same name"})
    return clips, skipped


def media_clip(path: Path) -> MediaClip:
    """The clip of one file given on the command line (``predict``): a video with sound, or a
    CREMA-D ``.flv`` with its ``.wav`` beside it or in ``../AudioWAV/``.

    Raises:
        MediaError: no such file, an audio-only or unsupported file, an FLV without its WAV.

    Example:
        >>> media_clip(Path("VideoFlash/1001_DFA_ANG_XX.flv")).audio
        PosixPath('AudioWAV/1001_DFA_ANG_XX.wav')
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    ext = path.suffix.lower()
    if ext in AUDIO_EXTENSIONS:
        raise MediaError(f"{path}: audio only; give the video (a CREMA-D .flv finds its .wav)")
    if ext not in VIDEO_EXTENSIONS:
        raise MediaError(f"{path}: unsupported file type ({ext or 'no extension'}); give a video "
                         f"({', '.join(sorted(VIDEO_EXTENSIONS))})")
    got = _clip(path, path.parent, named=True)
    if isinstance(got, str):
        raise MediaError(f"{path}: {got}")
    return got
