"""What extraction refuses or leaves out, in one line or with a reason, before harm is done: an
output under a file or in the media folder, a manifest row that leads out of --out, RAVDESS
songs, clips over --max-seconds, more workers than CPUs, a worker killed for memory when
there is only one, and a Ctrl-C that reaches a worker between clips.

    .venv/bin/python -m pytest tests/test_extract_places.py -q
"""

from __future__ import annotations

import os
import signal
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from tests.media import FPS, frames, speech, write_video
from trainer.extract.clips import SONG, MediaClip, find_clips
from trainer.extract.pool import DIED, MARKERS, run_clips
from trainer.extract.run import ExtractSettings, extract

RAVDESS = "01-01-03-01-01-01-01"  # speech, HAP, actor 01
SONG_NAME = "01-02-03-01-01-01-01"  # the same, sung


# The verbs run here set up logging on this test's captured stderr (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("restore_log_handlers")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """One real RAVDESS-style MP4 with a face and speech (1 s)."""
    wave = speech(seconds=1.0, sample_rate=22050)
    return write_video(tmp_path_factory.mktemp("clip") / f"{RAVDESS}.mp4", frames(FPS, True, 1),
                       audio=(wave, 22050))


def _main(argv: list[str], capsys) -> tuple[int, str]:
    from trainer.cli import main

    code = main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("flags, words", [
    (["--out", "{tmp}/afile/out"], "--out {tmp}/afile/out: {tmp}/afile is a file, not a folder"),
    (["--out", "s3://bucket/out/", "--cache-dir", "{tmp}/afile"],
     "--cache-dir {tmp}/afile: {tmp}/afile is a file, not a folder"),
    (["--video-rate", "inf"], "--video-rate must be positive and finite, not inf"),
    (["--video-rate", "nan"], "--video-rate must be positive and finite, not nan"),
    (["--video-rate", "-2"], "--video-rate must be positive and finite, not -2"),
    (["--max-seconds", "0"], "--max-seconds must be positive and finite, not 0"),
])
def test_bad_places_and_rates_are_one_line_before_anything_is_written(clip, tmp_path, capsys,
                                                                       flags, words):
    (tmp_path / "afile").write_text("a file")
    argv = ["extract", "--media", str(clip.parent), "--out", str(tmp_path / "out"),
            "--video", "opencv", *[f.format(tmp=tmp_path) for f in flags]]
    code, err = _main(argv, capsys)
    assert code == 1 and err == "error: " + words.format(tmp=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_out_in_the_media_folder_is_refused_and_the_media_manifest_kept(clip, tmp_path, capsys):
    media = tmp_path / "media"
    media.mkdir()
    os.link(clip, media / "a.mp4")
    manifest = media / "manifest.csv"
    manifest.write_text("path,label,speaker\na.mp4,HAP,anna\n")
    before = manifest.read_bytes()
    for argv in (["--media", str(media), "--out", f"{media}/"],
                 ["--media", str(media), "--out", str(tmp_path / "out"),
                  "--manifest", str(tmp_path / "out" / "manifest.csv")]):
        code, err = _main(["extract", *argv, "--video", "opencv"], capsys)
        assert code == 1 and len(err.splitlines()) == 1, err
        assert "is the --media folder" in err or "is where the output's own manifest" in err
    assert manifest.read_bytes() == before
    assert sorted(p.name for p in media.iterdir()) == ["a.mp4", "manifest.csv"]


def test_manifest_rows_with_dotdot_never_write_outside_out(clip, tmp_path):
    media, elsewhere = tmp_path / "media", tmp_path / "elsewhere"
    for folder in (media / "sub", elsewhere):
        folder.mkdir(parents=True)
    os.link(clip, elsewhere / "b.mp4")
    os.link(clip, media / "c.mp4")
    (media / "manifest.csv").write_text("path,label,speaker\n../elsewhere/b.mp4,HAP,anna\n"
                                        "sub/../c.mp4,SAD,ben\n")
    clips, skipped = find_clips(media)
    assert sorted(c.rel for c in clips) == ["b", "c"] and skipped == []
    out = tmp_path / "out"
    report = extract(media, out, ExtractSettings(video="opencv"), workers=1)
    assert report["written"] == ["b.npz", "c.npz"]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.npz")) == \
        ["out/b.npz", "out/c.npz"]
    assert (out / "manifest.csv").read_text().splitlines()[1:] == ["b.npz,HAP,anna,",
                                                                   "c.npz,SAD,ben,"]


def test_ravdess_songs_are_excluded_and_counted_unless_a_manifest_names_them(tmp_path):
    actor = tmp_path / "media" / "Actor_01"
    actor.mkdir(parents=True)
    for name in (f"{RAVDESS}.mp4", f"{SONG_NAME}.mp4", "03-02-03-01-01-01-01.wav"):
        (actor / name).write_bytes(b"not decoded here")
    clips, skipped = find_clips(tmp_path / "media")
    assert [c.rel for c in clips] == [f"Actor_01/{RAVDESS}"]
    assert {x["path"]: x["reason"] for x in skipped} == {
        f"Actor_01/{SONG_NAME}.mp4": SONG, "Actor_01/03-02-03-01-01-01-01.wav": SONG}
    report = extract(tmp_path / "media", tmp_path / "out", ExtractSettings(video="opencv"),
                     workers=1)
    assert report["counts"]["excluded"] == 2 and report["counts"]["skipped"] == 1  # the fake
    assert {x["path"] for x in report["excluded"]} == {f"Actor_01/{SONG_NAME}.mp4",
                                                       "Actor_01/03-02-03-01-01-01-01.wav"}
    manifest = tmp_path / "songs.csv"
    manifest.write_text(f"path,label,speaker\nmedia/Actor_01/{SONG_NAME}.mp4,HAP,ravdess/01\n")
    clips, skipped = find_clips(tmp_path / "media", manifest)
    assert [c.rel for c in clips] == [f"Actor_01/{SONG_NAME}"] and skipped == []


def test_a_clip_longer_than_max_seconds_is_skipped_with_its_reason(clip, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    os.link(clip, media / "a.mp4")
    report = extract(media, tmp_path / "out", ExtractSettings(video="opencv", max_seconds=0.5),
                     workers=1)
    assert report["written"] == []
    assert report["skipped"] == [{"path": "a.mp4",
                                  "reason": "longer than --max-seconds 0.5 (1.0 s)"}]


def test_more_workers_than_cpus_are_cut_to_the_cpus(clip, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    os.link(clip, media / "a.mp4")
    report = extract(media, tmp_path / "out", ExtractSettings(video="opencv"), workers=10 ** 6)
    assert report["workers"] == len(os.sched_getaffinity(0))
    assert report["written"] == ["a.npz"]


def _killed(clip: MediaClip) -> dict:
    """A clip whose process the kernel kills (as for memory)."""
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def test_one_isolated_worker_killed_takes_only_its_clip(tmp_path):
    todo = [MediaClip("a", None, None, "a")]
    got = list(run_clips(todo, _killed, tmp_path, workers=1, isolate=True))
    # the caller (this test) lives on, and hears which clip its worker died on
    assert got == [{"rel": "a", "reason": DIED, "seconds": 0.0, "timing": {}}]


def test_train_media_with_a_cache_dir_that_is_a_file_is_one_line(clip, tmp_path, capsys,
                                                                   s3_bucket):
    (tmp_path / "afile").write_text("a file")
    code, err = _main(["train", "--media", str(clip.parent), "--data", f"s3://{s3_bucket}/f/",
                       "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "afile"),
                       "--extract-args", "--video opencv"], capsys)
    assert code == 1 and "Traceback" not in err, err  # the run's config line, then the error
    assert err.splitlines()[-1] == \
        f"error: --cache-dir {tmp_path}/afile: {tmp_path}/afile is a file, not a folder", err


def _held(out: Path) -> set[str]:
    """The clips the pool's workers hold now, from their marker files."""
    held = set()
    for marker in out.glob(MARKERS):
        try:
            held.add(marker.read_text())
        except FileNotFoundError:  # its clip just finished
            pass
    return held


def _one_quick_one_slow(clip: MediaClip, out: Path) -> dict:
    """'quick' returns once another worker holds 'slow' (so that its own worker then waits
    with nothing left to take); 'slow' takes 3 s."""
    deadline = time.monotonic() + 30
    while clip.rel == "quick" and "slow" not in _held(out) and time.monotonic() < deadline:
        time.sleep(0.01)
    if clip.rel == "slow":
        time.sleep(3)
    return {"rel": clip.rel, "reason": None, "seconds": 0.0, "timing": {"pid": os.getpid()}}


def test_a_ctrl_c_that_reaches_an_idle_worker_prints_nothing_and_breaks_nothing(tmp_path, capfd):
    todo = [MediaClip("a", None, None, "quick"), MediaClip("b", None, None, "slow")]
    results = run_clips(todo, partial(_one_quick_one_slow, out=tmp_path), tmp_path, workers=2,
                        isolate=True)
    quick = next(results)
    assert quick["rel"] == "quick"
    # Its worker is idle now, inside the pool's read of its queue, as a terminal's Ctrl-C
    # finds the workers between two clips. Raised there, it printed a traceback and broke
    # the pool, whose other worker was then ended and its clip done again in a new one.
    os.kill(quick["timing"]["pid"], signal.SIGINT)
    rest = list(results)
    assert [r["rel"] for r in rest] == ["slow"] and rest[0]["reason"] is None
    assert rest[0]["timing"]["pid"] != quick["timing"]["pid"]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not list(tmp_path.glob(MARKERS))


def _children() -> set[int]:
    """This process's child processes now."""
    kids = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            kids |= {int(pid) for pid in (task / "children").read_text().split()}
        except FileNotFoundError:  # a thread that has just ended
            pass
    return kids


def _slow(clip: MediaClip) -> dict:
    """A clip that takes 2 s."""
    time.sleep(2)
    return {"rel": clip.rel, "reason": None, "seconds": 2.0, "timing": {}}


def test_a_ctrl_c_that_reaches_a_worker_while_it_starts_prints_nothing(tmp_path, capfd):
    before = _children()
    signalled: set[int] = set()
    done = threading.Event()

    def ctrl_c_each_new_worker():  # as soon as it exists: it is still importing
        while not done.is_set():
            for pid in _children() - before - signalled:
                os.kill(pid, signal.SIGINT)
                signalled.add(pid)
            time.sleep(0.001)

    watcher = threading.Thread(target=ctrl_c_each_new_worker)
    watcher.start()
    try:  # from the main thread, as the CLI runs it
        got = list(run_clips([MediaClip("a", None, None, "a")], _slow, tmp_path, workers=1,
                             isolate=True))
    except KeyboardInterrupt:  # the signal came after its handler was in place, mid-clip
        got = None
    finally:
        done.set()
        watcher.join()
    assert signalled
    assert got in (None, [{"rel": "a", "reason": None, "seconds": 2.0, "timing": {}}])
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
