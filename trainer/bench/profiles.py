"""Synthetic data sets whose properties are parameters: the robustness suite's profiles.

    from trainer.bench.profiles import PROFILES, generate
    generate(PROFILES["small-cue"], "runs/robustness/data/small-cue-seed-0", seed=0)

Every data set is in the real clip format (DESIGN.md section 2): one ``.npz`` per clip with
``audio_features`` [T_a, F_a], ``video_features`` [T_v, F_v] and their timestamps, named in the
CREMA-D style (``1001_DFA_ANG_XX.npz``) for half the speakers and the RAVDESS style
(``Actor_12/01-01-05-01-01-01-12.npz``) for the other half, and a ``manifest.csv``
(``path,label,speaker,split``) whose split column fixes the held-out speakers of every run.

The classes are the demo's (``trainer.demo.CLASSES``): an audio cue kind, a video cue kind, and,
for ANG/DIS and FEA/HAP, whether the two streams' cue events happen at the same moments. What a
:class:`Profile` sets, per stream where it says so:

- width and frame rate;
- the share of dimensions that carry the cue (the *informative* ones, a random subset fixed per
  data set); every other dimension holds background and speaker alone;
- the cue's amplitude per informative dimension against a background of standard deviation 1;
- events: length in video frames (audio events last as long in seconds) and count per clip,
  drawn without regard to the class, plus class-free *filler* events;
- the background: white, AR(1) noise correlated over a few frames, or a slow drift;
- the speaker: an offset in every dimension, optionally a gain per dimension and a rendering of
  each cue of their own (``speaker_style``);
- speakers per split and clips per speaker (the training set's size).

Event times: 2n onsets at least ``apart`` seconds from each other are drawn, and n of them,
chosen at random, are the audio cue events. Synchronous clips put the video events at the same
moments (within ``trainer.demo.SYNC_WITHIN``), asynchronous ones at the other n onsets, so the
times within each stream follow one process in both timings: no stream alone tells them apart.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from trainer.data import LABELS, MANIFEST_NAME, load_dataset, write_manifest
from trainer.demo import (
    CLASS_SHARE,
    CLASSES,
    CREMA_LEVELS,
    CREMA_SENTENCES,
    RAVDESS_CODE,
    SYNC_WITHIN,
    ar1_noise,
    Shape,
    cues,
    make_demo_data,
)
from trainer.metrics import classification_report
from trainer.store.files import atomic_write_bytes, atomic_write_text

BACKGROUNDS = ("white", "ar", "drift")
DRIFT_SECONDS = 1.0  # drift: correlation time of its slow part
ASYNC_MARGIN = 0.1  # s: an asynchronous video event starts this long after the longest event
NAMES_PER_EMOTION = 48  # distinct file names per speaker and emotion in both styles
DONE = "profile.json"  # written last: a data set without it is regenerated


@dataclass(frozen=True)
class Profile:
    """A data set's properties. Every field has the ``base`` profile's value as its default."""

    about: str = ""  # one line for the table
    generator: str = "profile"  # profile (this module) | demo (trainer.demo.make_demo_data)
    audio_dim: int = 40
    audio_fps: float = 50.0
    video_dim: int = 64
    video_fps: float = 30.0
    audio_share: float = 1.0  # share of the audio dimensions that carry the cue
    video_share: float = 1.0
    audio_cue: float = 0.8  # cue amplitude per informative dimension / background std
    video_cue: float = 0.8
    event_frames: tuple[int, int] = (3, 8)  # an event's length in video frames, inclusive
    events: tuple[int, int] = (3, 5)  # cue events per clip and stream, inclusive, any class
    fillers: tuple[int, int] = (0, 1)  # class-free events per clip and stream, inclusive
    background: str = "ar"  # white | ar | drift
    background_frames: float = 3.0  # ar: correlation time in frames of each stream
    speaker_offset: float = 1.0  # std of a speaker's offset per dimension (background stds)
    speaker_scale: float = 0.0  # std of a speaker's log gain per dimension
    speaker_style: float = 0.3  # how much of each cue pattern is the speaker's own
    train_speakers: int = 36
    val_speakers: int = 6
    test_speakers: int = 12
    clips_per_speaker: int = 24
    duration: tuple[float, float] = (2.5, 4.0)  # s

    @property
    def train_clips(self) -> int:
        return self.train_speakers * self.clips_per_speaker


ISSUE = {"audio_share": 0.3, "video_share": 0.1, "audio_cue": 0.9, "video_cue": 0.9,
         "event_frames": (2, 4), "events": (3, 5), "background": "ar", "background_frames": 3.0,
         "speaker_offset": 1.5, "speaker_style": 0.3}
# The grid. ``base`` is moderately easy; each profile after it changes one property, and the
# last two combine every property the issue names for real features.
PROFILES: dict[str, Profile] = {
    "demo": Profile("today's demo generator (trainer.demo), 54 speakers, 12 held out",
                    generator="demo"),
    "base": Profile("40-d audio at 50/s, 64-d video at 30/s; cue in every dim at 0.8; AR "
                    "background; 3-8 frame events; speaker offset 1"),
    "small-cue": Profile("the original shapes (89-d/100/s audio, 512-d/15/s video), cue in 10 % "
                         "of the audio and 5 % of the video dims at 0.7, 2-4 frame events",
                         audio_dim=89, audio_fps=100.0, video_dim=512, video_fps=15.0,
                         **{**ISSUE, "audio_share": 0.1, "video_share": 0.05, "audio_cue": 0.7,
                            "video_cue": 0.7}),
    "brief": Profile("base, events of 2-4 video frames", event_frames=(2, 4)),
    "speaker-offsets": Profile("base, speaker offset 3 per dim, gain 0.3, own cue style 0.6",
                               speaker_offset=3.0, speaker_scale=0.3, speaker_style=0.6),
    "white": Profile("base, white background", background="white"),
    "drift": Profile("base, slow-drift background", background="drift"),
    "small-n": Profile("base, 300 training clips (20 speakers x 15)", train_speakers=20,
                       clips_per_speaker=15),
    "large-n": Profile("base, 3,000 training clips (100 speakers x 30)", train_speakers=100,
                       clips_per_speaker=30),
    "wide": Profile("base at 25-d audio at 100/s and 1,024-d video at 15/s, cue in 25 %",
                    audio_dim=25, audio_fps=100.0, video_dim=1024, video_fps=15.0,
                    audio_share=0.25, video_share=0.25),
    "issue-128": Profile("the issue's properties: 25-d/100/s audio, 128-d/30/s video, cue in "
                         "30 % (audio) and 10 % (video) of the dims at 0.9, 2-4 frame events",
                         audio_dim=25, audio_fps=100.0, video_dim=128, video_fps=30.0, **ISSUE),
    "orig-shapes": Profile("the issue's properties in the original shapes: 89-d/100/s audio, "
                           "512-d/15/s video", audio_dim=89, audio_fps=100.0, video_dim=512,
                           video_fps=15.0, **ISSUE),
}


def quick(p: Profile) -> Profile:
    """A test-sized version: 8 held-out speakers still, few clips, narrow streams."""
    return replace(p, train_speakers=6, val_speakers=3, test_speakers=8, clips_per_speaker=6,
                   audio_dim=min(p.audio_dim, 16), video_dim=min(p.video_dim, 24),
                   audio_fps=min(p.audio_fps, 50.0))


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # uncompressed: noise does not compress, and it is 5x faster
    return buf.getvalue()


def _noise(rng, n: int, dim: int, fps: float, p: Profile) -> np.ndarray:
    """Background of unit variance per dimension, (n, dim)."""
    if p.background == "white":
        return rng.normal(size=(n, dim))
    if p.background == "ar":
        return ar1_noise(rng, n, dim, np.exp(-1.0 / p.background_frames))
    slow = ar1_noise(rng, n, dim, np.exp(-1.0 / (DRIFT_SECONDS * fps)))
    return np.sqrt(0.5) * slow + np.sqrt(0.5) * rng.normal(size=(n, dim))


class Stream:
    """One stream's fixed parts: its informative dimensions and its three cue patterns."""

    def __init__(self, rng, dim: int, share: float):
        m = min(dim, max(1, round(share * dim)))
        self.dims = np.sort(rng.choice(dim, m, replace=False))
        kind0 = rng.choice([-1.0, 1.0], m)
        flip = np.ones(m)
        flip[rng.choice(m, max(1, m // 2), replace=False)] = -1.0  # kind 1 orthogonal to kind 0
        self.patterns = np.stack([kind0, kind0 * flip, rng.choice([-1.0, 1.0], m)])  # 0, 1, filler


class Speaker:
    """What one speaker adds: offsets and gains per dimension, and cue patterns of their own."""

    def __init__(self, rng, p: Profile, streams: tuple[Stream, Stream]):
        self.offset, self.gain, self.patterns = [], [], []
        for dim, st in zip((p.audio_dim, p.video_dim), streams):
            self.offset.append(rng.normal(0, p.speaker_offset, dim))
            self.gain.append(np.exp(rng.normal(0, p.speaker_scale, dim)) if p.speaker_scale
                             else np.ones(dim))
            own = st.patterns + p.speaker_style * rng.normal(size=st.patterns.shape)
            self.patterns.append(own / np.sqrt((own ** 2).mean(1, keepdims=True)))  # rms 1


class Maker:
    """Clips of one data set; every draw comes from one seeded generator, in a fixed order."""

    def __init__(self, p: Profile, seed: int):
        if p.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}")
        self.p, self.rng = p, np.random.default_rng(seed)
        self.streams = (Stream(self.rng, p.audio_dim, p.audio_share),
                        Stream(self.rng, p.video_dim, p.video_share))

    def speaker(self) -> Speaker:
        return Speaker(self.rng, self.p, self.streams)

    def events(self, label: int, duration: float):
        """Cue (onsets, lengths) per stream in seconds; the count never depends on the class."""
        rng, p = self.rng, self.p
        timing = cues(label)[2]
        sync = rng.random() < 0.5 if timing is None else timing == "sync"
        longest = p.event_frames[1] / p.video_fps
        apart = longest + ASYNC_MARGIN
        lo, hi = 0.05, duration - longest - 0.05
        n = int(rng.integers(p.events[0], p.events[1] + 1))
        n = max(1, min(n, (int((hi - lo) / apart) + 1) // 2))  # as many as the clip holds
        slack = max(hi - lo - (2 * n - 1) * apart, 0.0)
        points = np.sort(rng.uniform(0, slack, 2 * n)) + np.arange(2 * n) * apart + lo
        order = rng.permutation(2 * n)
        a_on, other = np.sort(points[order[:n]]), np.sort(points[order[n:]])
        frames = rng.integers(p.event_frames[0], p.event_frames[1] + 1, n) / p.video_fps
        if sync:
            v_on = np.clip(a_on + rng.uniform(-SYNC_WITHIN, SYNC_WITHIN, n), 0.0, None)
            return (a_on, frames), (v_on, frames)
        v_len = rng.integers(p.event_frames[0], p.event_frames[1] + 1, n) / p.video_fps
        return (a_on, frames), (other, v_len)

    def clip(self, label: int, spk: Speaker) -> dict:
        rng, p = self.rng, self.p
        duration = rng.uniform(*p.duration)
        kinds = cues(label)[:2]
        streams = []  # (frame times, background) per stream
        for dim, fps in ((p.audio_dim, p.audio_fps), (p.video_dim, p.video_fps)):
            t = (np.arange(int(duration * fps)) + 0.5) / fps  # frame centres, s
            streams.append((t, _noise(rng, t.size, dim, fps, p)))  # (T,), (T, dim)
        cue_events = self.events(label, duration)
        out = {}
        for s, key in enumerate(("audio", "video")):
            (t, x), st, amp = streams[s], self.streams[s], (p.audio_cue, p.video_cue)[s]
            n_fill = int(rng.integers(p.fillers[0], p.fillers[1] + 1))
            fillers = (rng.uniform(0.05, duration - p.event_frames[1] / p.video_fps, n_fill),
                       rng.integers(p.event_frames[0], p.event_frames[1] + 1, n_fill)
                       / p.video_fps)
            for pattern, (onsets, lengths) in ((spk.patterns[s][kinds[s]], cue_events[s]),
                                               (spk.patterns[s][2], fillers)):
                for on, ln in zip(onsets, lengths):
                    inside = (t >= on) & (t < on + ln)  # a box over the event's frames
                    x[np.ix_(inside, st.dims)] += amp * rng.uniform(0.7, 1.0) * pattern
            out[f"{key}_features"] = ((x + spk.offset[s]) * spk.gain[s]).astype(np.float32)
            out[f"{key}_timestamps"] = t.astype(np.float32)
        out["emotion_label"] = np.int64(label)
        out["params"] = np.array(json.dumps({"source": "trainer.bench.profiles"}))
        return out


def ceiling(p: Profile, seed: int = 0, clips: int = 240) -> tuple[float, float, float, float]:
    """How often a matched filter that knows the cue (its dimensions and the two kinds' shared
    patterns, not a speaker's own) tells the audio and the video cue kind of fresh clips, and
    the timing pairs apart; and the macro-F1 of its own call of all six classes.

    A profile is meant to hold its cues, however faint: where this is near 0.5, no model can
    learn them and the profile measures nothing. Each stream is standardised per clip,
    projected on both patterns, smoothed over an event's typical length, and the kind whose
    strongest moments are stronger wins. For the timing, each stream's trace along its clip's
    own kind, the video's read at the audio's times, are correlated over the clip: events that
    happen together correlate. The threshold is the midpoint of the two timings' means over the
    first half of the timing clips, and the second half is scored. The six-class call reads the
    two kinds it found and, where they name a timing pair, the correlation along them against
    the same threshold; it is scored on the second half of all the clips. Returns (audio,
    video, timing) accuracies and that macro-F1: about the most a model can hope for.
    """
    maker, right, spk = Maker(p, seed), np.zeros(2), None
    corr, sync, labels, calls = [], [], [], []
    for i in range(clips):
        if i % p.clips_per_speaker == 0:
            spk = maker.speaker()
        label = int(maker.rng.integers(len(LABELS)))
        clip = maker.clip(label, spk)
        traces, kinds = [], []
        for s, (key, fps) in enumerate((("audio", p.audio_fps), ("video", p.video_fps))):
            x = clip[f"{key}_features"].astype(np.float64)
            x = (x - x.mean(0)) / (x.std(0) + 1e-9)
            st = maker.streams[s]
            score = x[:, st.dims] @ st.patterns[:2].T  # (T, 2)
            k = max(1, round(sum(p.event_frames) / 2 / p.video_fps * fps))
            score = np.apply_along_axis(np.convolve, 0, score, np.ones(k) / k, "same")
            top = np.sort(score, 0)[-k * p.events[0]:].mean(0)  # the strongest moments
            kinds.append(int(top[1] > top[0]))
            right[s] += cues(label)[s] == kinds[-1]
            traces.append((clip[f"{key}_timestamps"], score))
        (ta, a), (tv, v) = traces

        def along(ka: int, kv: int) -> float:  # the two streams' traces, correlated
            za, zv = ((y - y.mean()) / (y.std() + 1e-9)
                      for y in (a[:, ka], np.interp(ta, tv, v[:, kv])))
            return float((za * zv).mean())

        if cues(label)[2] is not None:
            corr.append(along(*cues(label)[:2]))
            sync.append(cues(label)[2] == "sync")
        labels.append(label)
        calls.append((*kinds, along(*kinds)))
    c, y, h = np.array(corr), np.array(sync), len(corr) // 2
    timing, threshold = 0.5, np.inf
    if y[:h].any() and (~y[:h]).any() and h < len(c):
        threshold = (c[:h][y[:h]].mean() + c[:h][~y[:h]].mean()) / 2
        timing = float(((c[h:] > threshold) == y[h:]).mean())
    called = [next(j for j, (ca, cv, t) in enumerate(CLASSES) if (ca, cv) == (ka, kv) and
                   t in (None, "sync" if r > threshold else "async"))
              for ka, kv, r in calls]
    half = clips // 2
    f1 = classification_report(labels[half:], called[half:], LABELS)["macro_f1"]
    return (*(float(r) for r in right / clips), timing, f1)


def clip_name(speaker: int, label: int, k: int) -> tuple[str, str]:
    """(relative path, speaker id) of a speaker's ``k``-th clip of a class: even speakers in
    the CREMA-D style, odd ones in the RAVDESS style (``trainer.data.parse_name`` reads both)."""
    if k >= NAMES_PER_EMOTION:
        raise ValueError(f"more than {NAMES_PER_EMOTION} clips of one class for one speaker")
    emo, half = LABELS[label], speaker // 2
    if speaker % 2 == 0:
        sid = f"{1001 + half}"
        name = f"{sid}_{CREMA_SENTENCES[k % 12]}_{emo}_{CREMA_LEVELS[k // 12]}.npz"
        return name, f"crema-d/{sid}"
    actor = f"{1 + half:02d}"
    rep, stmt, inten, chan, mod = k % 2, k // 2 % 2, k // 4 % 2, k // 8 % 2, k // 16
    name = (f"Actor_{actor}/{mod + 1:02d}-{chan + 1:02d}-{RAVDESS_CODE[emo]}-{inten + 1:02d}-"
            f"{stmt + 1:02d}-{rep + 1:02d}-{actor}.npz")
    return name, f"ravdess/{actor}"


def split_of(p: Profile, speakers: list[str], seed: int) -> dict[str, str]:
    """Each speaker's split: a seeded draw of test, then validation speakers; the rest train."""
    order = np.random.default_rng([seed, 7]).permutation(len(speakers))
    n_te, n_va = p.test_speakers, p.val_speakers
    return {speakers[i]: "test" if j < n_te else "val" if j < n_te + n_va else "train"
            for j, i in enumerate(order)}


def is_made(p: Profile, out: str | Path, seed: int) -> bool:
    """Whether ``out`` holds the finished data set of profile ``p`` and ``seed``."""
    done = Path(out) / DONE
    if not done.exists():
        return False
    info = json.loads(done.read_text())
    return info.get("profile") == json.loads(json.dumps(asdict(p))) and info.get("seed") == seed


def generate(p: Profile, out: str | Path, seed: int = 0) -> dict:
    """Write profile ``p``'s data set into ``out`` (deterministic in ``seed``); returns counts.

    A folder that already holds this profile's data set (its ``profile.json``) is left as it
    is; one made with other properties or another seed is made again.
    """
    out = Path(out)
    if is_made(p, out, seed):
        return json.loads((out / DONE).read_text())
    if (out / DONE).exists():
        shutil.rmtree(out)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # from an interrupted generation
    n_speakers = p.train_speakers + p.val_speakers + p.test_speakers
    if p.generator == "demo":
        make_demo_data(out, seed=seed, speakers=n_speakers, clips_per_speaker=p.clips_per_speaker,
                       shape=Shape(p.audio_fps, p.audio_dim, p.video_fps, p.video_dim))
        clips = load_dataset(out).clips  # broken and excluded files stay out of the manifest
        rows = [(c.path, c.label, c.speaker) for c in clips]
    else:
        maker, rows = Maker(p, seed), []
        for s in range(n_speakers):
            spk = maker.speaker()
            labels = maker.rng.choice(len(LABELS), size=p.clips_per_speaker, p=CLASS_SHARE)
            used = [0] * len(LABELS)
            for label in labels:
                path, sid = clip_name(s, int(label), used[label])
                used[label] += 1
                atomic_write_bytes(out / path, _npz_bytes(**maker.clip(int(label), spk)))
                rows.append((path, int(label), sid))
    speakers = sorted({r[2] for r in rows})
    split = split_of(p, speakers, seed)
    write_manifest(out / MANIFEST_NAME, [(path, LABELS[label], spk, split[spk])
                                         for path, label, spk in rows])
    counts = {k: sum(split[r[2]] == k for r in rows) for k in ("train", "val", "test")}
    info = {"profile": asdict(p), "seed": seed, "clips": counts,
            "speakers": {k: sum(v == k for v in split.values()) for k in counts}}
    atomic_write_text(out / DONE, json.dumps(info, indent=2) + "\n")
    return info
