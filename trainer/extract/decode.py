"""Decoding media with PyAV (its wheels bundle FFmpeg): audio as 16 kHz mono, video frames by
their true presentation times, both on the container's clock (DESIGN.md section 7).

    wave = read_audio(Path("AudioWAV/1001_DFA_ANG_XX.wav"))         # float32, 16 kHz mono
    audio = decode_audio(Path("clip.mp4"))                           # .wave and .audio_start
    for t, rgb in read_frames(Path("VideoFlash/1001_DFA_ANG_XX.flv"), rate=15):
        ...                                                          # t in seconds, (H, W, 3)

Times count from the container's start, the earliest of its streams: a stream that starts
late (an MP4 whose audio begins 0.4 s after its picture) keeps that offset. Video frame times
carry it in themselves; the audio's is ``DecodedAudio.audio_start``, which whoever gives the
wave's samples or frames times adds to them (``sample_index / sample_rate + audio_start``).

Every problem with a file (unreadable, truncated, a stream missing) is a ``MediaError`` whose
message is the one-line reason ``extract`` reports for the clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from trainer.errors import MediaError

# A file whose decoded stream ends this much before the length its header states is truncated
# (an interrupted copy): FLV keeps decoding up to the cut without an error, so only this shows it.
TRUNCATED_SHARE, TRUNCATED_SECONDS = 0.1, 0.25


@dataclass(frozen=True)
class DecodedAudio:
    """A clip's audio: ``wave`` float32 mono at ``sample_rate``, whose first sample is at
    ``audio_start`` seconds on the container's clock (0.0 unless the audio stream starts after
    another stream of its file)."""

    wave: np.ndarray
    sample_rate: int
    audio_start: float = 0.0


def _container_start(container) -> float:
    """The container's start in seconds: the earliest start of its streams (0 if unstated)."""
    return container.start_time / 1_000_000 if container.start_time is not None else 0.0


def _too_long(seconds: float, max_seconds: float | None) -> MediaError | None:
    if max_seconds is not None and seconds > max_seconds:
        return MediaError(f"longer than --max-seconds {max_seconds:g} ({seconds:.1f} s)")
    return None


def _open(path: Path):
    import av  # PyAV (the extract extra): loaded when media are decoded

    if not Path(path).is_file():
        raise MediaError(f"{path}: no such file")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as e:  # InvalidDataError for a cut MP4 (its index is at the end)
        raise MediaError(f"unreadable media ({_ffmpeg_message(e)})") from None


def _ffmpeg_message(e: Exception) -> str:
    """FFmpeg's message without the errno and the path, which the report already names."""
    import av  # PyAV (the extract extra): loaded when media are decoded

    if isinstance(e, av.error.FFmpegError) and e.strerror:
        return e.strerror
    return " ".join(str(e).split())[:160]


def _stated_seconds(container, stream) -> float | None:
    """The length the file's header states for ``stream`` (or the whole file), if any."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # in AV_TIME_BASE units
    return None


def _check_length(decoded: float, stated: float | None, what: str) -> None:
    if stated and stated - decoded > max(TRUNCATED_SECONDS, TRUNCATED_SHARE * stated):
        raise MediaError(f"truncated {what}: decoded {decoded:.2f} s of the {stated:.2f} s "
                         "its header states")


def read_audio(path: Path, sample_rate: int = 16000) -> np.ndarray:
    """The first audio stream of ``path`` as float32 mono at ``sample_rate`` (``decode_audio``'s
    wave, without its start time).

    Example:
        >>> read_audio(Path("Actor_01/01-01-05-01-01-01-01.mp4")).shape   # 3.5 s of speech
        (56000,)
    """
    return decode_audio(path, sample_rate).wave


def decode_audio(path: Path, sample_rate: int = 16000,
                 max_seconds: float | None = None) -> DecodedAudio:
    """The first audio stream of ``path`` as float32 mono at ``sample_rate``: resampled by
    FFmpeg, then the channels averaged (FFmpeg's own downmix adds them at -3 dB each, which
    would make a stereo file 3 dB louder than the same sound in mono); with the time of its
    first sample on the container's clock (``audio_start``).

    Raises:
        MediaError: unreadable or truncated file, no audio stream, no samples, or longer than
            ``max_seconds`` (told by its header, else found while decoding, so that a long
            file is never held whole in memory).

    Example:
        >>> audio = decode_audio(Path("late-audio.mp4"))   # its audio starts 0.4 s in
        >>> audio.wave.shape, round(audio.audio_start, 3)
        ((25600,), 0.4)
    """
    import av  # PyAV (the extract extra): loaded when media are decoded

    container = _open(path)
    try:
        if not container.streams.audio:
            raise MediaError("no audio stream")
        stream = container.streams.audio[0]
        stated = _stated_seconds(container, stream)
        if (error := _too_long(stated or 0.0, max_seconds)) is not None:
            raise error
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)  # planar: (C, N)
        chunks, first, n = [], None, 0
        try:
            for frame in container.decode(stream):
                if first is None and frame.pts is not None:
                    first = float(frame.pts * frame.time_base)
                chunks += [f.to_ndarray().mean(axis=0) for f in resampler.resample(frame)]
                n += frame.samples / frame.sample_rate
                if (error := _too_long(n, max_seconds)) is not None:
                    raise error
            chunks += [f.to_ndarray().mean(axis=0) for f in resampler.resample(None)]  # flush
        except av.error.FFmpegError as e:
            raise MediaError(f"corrupt audio ({_ffmpeg_message(e)})") from None
        wave = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else \
            np.zeros(0, np.float32)
        if not len(wave):
            raise MediaError("no audio samples")
        if stream.codec_context.name != "pcm_s16le":  # a WAV's stated length is its file size
            _check_length(len(wave) / sample_rate, stated, "audio")
        if stated and len(wave) > stated * sample_rate:
            # AAC pads its last 1024-sample frame: a 1.00 s track decodes to 1.02 s; the
            # container's length is the true one, so the padding is cut
            wave = wave[:int(round(stated * sample_rate))]
        if first is None and stream.start_time is not None:
            first = float(stream.start_time * stream.time_base)
        start = (first or 0.0) - _container_start(container)
        return DecodedAudio(wave, sample_rate, start if math.isfinite(start) else 0.0)
    finally:
        container.close()


class RateGrid:
    """Picks frames at most ``rate`` per second by their times: a frame is taken when its time
    reaches the next slot of the ``1 / rate`` grid.

    Example:
        >>> grid = RateGrid(15)
        >>> [t for t in (0.0, 0.033, 0.067, 0.1, 0.133) if grid.take(t)]
        [0.0, 0.067, 0.133]
    """

    def __init__(self, rate: float):
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"video rate must be a positive number, not {rate}")
        self.step = 1.0 / rate
        # Time bases round (FLV's to whole milliseconds: 0.133 for 2/15 s): a frame this close
        # before its slot still takes it, or 30 fps at rate 15 would pick frames unevenly.
        self.slack = 0.1 * self.step
        self.next_slot = -np.inf

    def take(self, t: float) -> bool:
        if t < self.next_slot - self.slack:
            return False
        self.next_slot = (np.floor((t + self.slack) / self.step) + 1) * self.step
        return True


def at_rate(times: np.ndarray, rate: float) -> np.ndarray:
    """Boolean mask of the ``times`` (seconds, ascending) that ``RateGrid(rate)`` keeps."""
    grid = RateGrid(rate)
    return np.array([grid.take(float(t)) for t in times], dtype=bool)


def read_frames(path: Path, rate: float,
                max_seconds: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """RGB uint8 frames (H, W, 3) of the first video stream, at most ``rate`` per second.

    Frames are picked by their presentation times (``RateGrid``): a 30 fps video at rate 15
    gives every other frame, and a 25 fps one 15 frames a second at their own, uneven, times.
    Only kept frames are converted to RGB (the costly part). Times are seconds on the
    container's clock: from the start of its earliest stream.

    Raises:
        MediaError: unreadable, corrupt or truncated file, no video stream, no frames, or
            longer than ``max_seconds``.

    Example:
        >>> [round(t, 3) for t, _ in read_frames(Path("clip.flv"), rate=15)][:3]
        [0.0, 0.067, 0.133]
    """
    import av  # PyAV (the extract extra): loaded when media are decoded

    grid = RateGrid(rate)
    container = _open(path)
    try:
        if not container.streams.video:
            raise MediaError("no video stream")
        stream = container.streams.video[0]
        stated = _stated_seconds(container, stream)
        if (error := _too_long(stated or 0.0, max_seconds)) is not None:
            raise error
        start = _container_start(container)
        first, last, kept = None, 0.0, 0
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue  # no time: cannot be placed on the time axis
                t = float(frame.pts * frame.time_base) - start
                first = t if first is None else first
                last = t
                if (error := _too_long(t - first, max_seconds)) is not None:
                    raise error
                if not grid.take(t):
                    continue
                kept += 1
                yield t, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise MediaError(f"corrupt video ({_ffmpeg_message(e)})") from None
        if not kept:
            raise MediaError("no video frames")
        frame_seconds = 1 / float(stream.average_rate) if stream.average_rate else 0.0
        _check_length(last - first + frame_seconds, stated, "video")
    finally:
        container.close()
