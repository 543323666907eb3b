"""The robustness suite: data profiles that hold what they claim, the linear floor, the runner."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from trainer.bench.linear import clip_features, linear_baseline
from trainer.bench.profiles import ASYNC_MARGIN, PROFILES, Maker, Profile, ceiling, generate
from trainer.bench.robustness import grouped, main
from trainer.data import LABELS, load_dataset, parse_name
from trainer.demo import SYNC_WITHIN, cues

# A tiny profile: 8 held-out speakers still, narrow streams, white background.
TINY = Profile(audio_dim=12, audio_fps=50.0, video_dim=20, video_fps=25.0, train_speakers=6,
               val_speakers=3, test_speakers=8, clips_per_speaker=6, background="white")


def rows(path):
    with open(path / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_cue_lives_only_in_the_informative_dimensions():
    p = replace(TINY, audio_share=0.25, video_share=0.1)
    with_cue, without = Maker(p, seed=3), Maker(replace(p, audio_cue=0, video_cue=0), seed=3)
    spk_a, spk_b = with_cue.speaker(), without.speaker()
    changed = {"audio": np.zeros(p.audio_dim, bool), "video": np.zeros(p.video_dim, bool)}
    for label in range(len(LABELS)):
        a, b = with_cue.clip(label, spk_a), without.clip(label, spk_b)  # the same draws
        for key in changed:
            changed[key] |= np.abs(a[f"{key}_features"] - b[f"{key}_features"]).max(0) > 1e-5
    assert np.flatnonzero(changed["audio"]).tolist() == with_cue.streams[0].dims.tolist()
    assert np.flatnonzero(changed["video"]).tolist() == with_cue.streams[1].dims.tolist()
    assert len(with_cue.streams[0].dims) == 3 and len(with_cue.streams[1].dims) == 2


def test_class_means_differ_in_the_informative_dimensions_only(tmp_path):
    p = replace(TINY, video_share=0.25, video_cue=1.0, speaker_offset=0.0, clips_per_speaker=30,
                train_speakers=10)
    generate(p, tmp_path, seed=1)
    ds = load_dataset(tmp_path)
    v0 = [c for c in ds.clips if cues(c.label)[1] == 0]  # video cue kind 0 against kind 1
    v1 = [c for c in ds.clips if cues(c.label)[1] == 1]
    diff = np.abs(np.mean([c.video.mean(0) for c in v0], 0) - np.mean([c.video.mean(0)
                                                                      for c in v1], 0))
    dims = Maker(p, seed=1).streams[1].dims
    rest = np.setdiff1d(np.arange(p.video_dim), dims)
    # The two kinds are orthogonal: opposite signs on half the informative dimensions, the
    # same on the other half. Those opposite ones carry all of the difference.
    big = np.flatnonzero(diff > 5 * diff[rest].max())
    assert len(big) >= 2 and set(big) <= set(dims)


def test_timing_pairs_differ_only_in_when_the_video_events_happen():
    p = replace(TINY, event_frames=(2, 4), events=(3, 5), duration=(4.0, 4.0))
    apart = p.event_frames[1] / p.video_fps + ASYNC_MARGIN
    for seed in range(20):
        (a_sync, len_sync), (v_sync, _) = Maker(p, seed).events(LABELS.index("ANG"), 4.0)
        (a_async, len_async), (v_async, _) = Maker(p, seed).events(LABELS.index("DIS"), 4.0)
        assert cues(0)[:2] == cues(1)[:2]  # the same cue kinds in both streams
        np.testing.assert_array_equal(a_sync, a_async)  # the same audio events, count included
        np.testing.assert_array_equal(len_sync, len_async)
        assert 3 <= len(a_sync) <= 5 and len(v_async) == len(a_async)
        assert np.abs(v_sync - a_sync).max() <= SYNC_WITHIN + 1e-9
        assert np.abs(v_async[:, None] - a_async[None, :]).min() >= apart - 1e-9


def test_every_speaker_has_an_offset_in_every_dimension(tmp_path):
    def spread(offset, out):
        generate(replace(TINY, speaker_offset=offset, audio_cue=0, video_cue=0), out, seed=2)
        clips = load_dataset(out).clips
        speakers = sorted({c.speaker for c in clips})
        means = np.stack([np.mean([c.video.mean(0) for c in clips if c.speaker == s], 0)
                          for s in speakers])
        return means.std(0)  # between-speaker spread per dimension

    strong, none = spread(2.0, tmp_path / "a"), spread(0.0, tmp_path / "b")
    assert strong.min() > 1.0 and none.max() < 0.5


def test_the_manifest_holds_out_eight_speakers_and_the_names_parse(tmp_path):
    info = generate(TINY, tmp_path, seed=0)
    assert info["speakers"] == {"train": 6, "val": 3, "test": 8}
    split_of = {}
    for r in rows(tmp_path):
        assert split_of.setdefault(r["speaker"], r["split"]) == r["split"]  # one split each
        stem = r["path"].rsplit("/", 1)[-1][:-4]
        assert parse_name(stem) == (r["label"], r["speaker"])  # CREMA-D or RAVDESS names
    assert sum(s == "test" for s in split_of.values()) >= 8
    styles = {r["speaker"].split("/")[0] for r in rows(tmp_path)}
    assert styles == {"crema-d", "ravdess"}
    ds = load_dataset(tmp_path)
    assert {c.split for c in ds.clips} == {"train", "val", "test"} and not ds.skipped
    assert ds.audio_dim == 12 and ds.video_dim == 20


def test_generation_is_deterministic_in_its_seed(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        generate(TINY, tmp_path / name, seed=seed)
    first = rows(tmp_path / "a")
    assert first == rows(tmp_path / "b") and first != rows(tmp_path / "c")
    path = first[0]["path"]
    assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    # A finished data set is left alone, not made again.
    stamp = (tmp_path / "a" / path).stat().st_mtime_ns
    generate(TINY, tmp_path / "a", seed=5)
    assert (tmp_path / "a" / path).stat().st_mtime_ns == stamp


def test_every_named_profile_is_a_valid_data_set_with_eight_held_out_speakers():
    for name, p in PROFILES.items():
        assert p.about, name
        assert p.test_speakers >= 8 and p.val_speakers >= 1, name
        assert 300 <= p.train_clips <= 3000, name
    widths = [d for p in PROFILES.values() for d in (p.audio_dim, p.video_dim)]
    rates = [r for p in PROFILES.values() for r in (p.audio_fps, p.video_fps)]
    shares = [s for p in PROFILES.values() for s in (p.audio_share, p.video_share)]
    assert min(widths) <= 25 and max(widths) >= 1024 and min(rates) <= 15 and max(rates) >= 100
    assert min(shares) <= 0.1 and max(shares) == 1.0
    assert min(p.video_cue for p in PROFILES.values()) < 1.0
    assert {p.background for p in PROFILES.values()} == {"white", "ar", "drift"}


def test_every_profile_holds_cues_a_matched_filter_can_tell():
    """However faint, each profile's cues and timing pairs are there to learn: a profile no model
    can learn would rank settings on noise. The filter knows the cue dims and patterns; a faint
    one still fails."""
    for name, p in PROFILES.items():
        if p.generator == "profile":
            *grouped, f1 = ceiling(p, clips=96)
            assert min(grouped) >= 0.9, name
            # its six-class call needs both kinds right, and the timing too on the pairs
            assert f1 <= max(grouped) + 0.05 and f1 >= 0.5, name
    faint = Profile(audio_share=0.05, video_share=0.05, audio_cue=0.3, video_cue=0.3,
                    event_frames=(2, 3))
    assert max(ceiling(faint, clips=96)) < 0.8
    assert ceiling(PROFILES["base"], clips=96)[3] == 1.0  # every cue plain: every clip right


def test_a_data_set_made_with_other_properties_is_made_again(tmp_path):
    generate(TINY, tmp_path, seed=0)
    before = rows(tmp_path)
    generate(replace(TINY, video_cue=TINY.video_cue / 2), tmp_path, seed=0)
    info = json.loads((tmp_path / "profile.json").read_text())
    assert info["profile"]["video_cue"] == TINY.video_cue / 2
    assert rows(tmp_path) == before  # the same names and splits from the same seed
    generate(TINY, tmp_path, seed=1)
    assert json.loads((tmp_path / "profile.json").read_text())["seed"] == 1


def test_pooled_features_are_three_statistics_per_dimension(tmp_path):
    generate(TINY, tmp_path, seed=0)
    c = load_dataset(tmp_path).clips[0]
    f = clip_features(c)
    assert f.shape == (3 * (12 + 20),)
    np.testing.assert_allclose(f[:12], c.audio.mean(0), rtol=1e-5)
    np.testing.assert_allclose(f[-20:], c.video.max(0), rtol=1e-5)


def test_the_linear_floor_learns_the_cues_but_not_the_timing(tmp_path):
    easy = replace(TINY, audio_cue=1.5, video_cue=1.5, train_speakers=12, val_speakers=4,
                   clips_per_speaker=24)
    generate(easy, tmp_path, seed=0)
    r = linear_baseline(str(tmp_path))
    g = grouped(r["test"]["confusion_matrix"])
    assert r["test"]["macro_f1"] > 0.45  # chance is about 0.17; pooling caps it near 0.67
    assert g["audio_cue"] > 0.85 and g["video_cue"] > 0.85
    assert abs(g["timing"] - 0.5) < 0.15  # pooling over time cannot see when events happen
    assert len(r["data"]["test"]["speakers"]) == 8 and r["validation"]["norm"] in ("none",
                                                                                   "speaker")


def test_grouped_figures_of_a_confusion_matrix():
    cm = np.zeros((6, 6), int)
    cm[0, 1] = 10  # ANG taken for DIS: both cues right, timing wrong
    cm[2, 2] = 10  # FEA right
    g = grouped(cm.tolist())
    assert g == {"audio_cue": 1.0, "video_cue": 1.0, "timing": 0.5}
    cm[4, 5] = 20  # NEU (A0 V1) taken for SAD (A1 V0): both cues wrong
    assert grouped(cm.tolist())["audio_cue"] == 0.5


@pytest.mark.slow
def test_the_suite_writes_its_table_and_reads_finished_runs_instead_of_repeating_them(
        tmp_path, capsys):
    args = ["--out", str(tmp_path), "--profiles", "base", "--seeds", "0",
            "--variants", "hybrid,ens3,linear", "--quick", "--epochs", "1"]
    assert main(args) == 0
    doc = json.loads((tmp_path / "robustness.json").read_text())
    cell = doc["summary"]["profiles"]["base"]
    assert set(cell) == {"hybrid", "ens3", "linear"} and cell["hybrid"]["seeds"] == 1
    run = doc["runs"]["base/hybrid"]["0"]
    assert run["test_speakers"] == 8 and len(run["curve"]) == 1 and 0 <= run["timing"] <= 1
    summary = json.loads((tmp_path / "base" / "hybrid-seed-0" / "summary.json").read_text())
    assert run["linear_mix"] == summary["linear_head"]["mix"]  # the linear head's weight
    cfg = json.loads((tmp_path / "base" / "hybrid-seed-0" / "config.json").read_text())
    assert cfg["epochs"] == 1 and cfg["threads"] == 1 and cfg["d_model"] == 32
    assert cfg["data"].endswith("data/base-seed-0")
    ens = doc["runs"]["base/ens3"]["0"]  # its members' own epochs and figures
    assert ens["best_epoch"] == [1, 1, 1] and len(ens["member_macro_f1"]) == 3
    assert run["macro_f1"] == ens["member_macro_f1"][0]  # member 0 is the run of its seed
    table = (tmp_path / "robustness.md").read_text()
    assert "| base |" in table and "**worst**" in table and "±" in table
    assert "base             hybrid  seed 0: macro-F1" in capsys.readouterr().out
    assert (tmp_path / "base" / "ens3-seed-0" / "members" / "2" / "summary.json").is_file()
    stamps = [(tmp_path / "base" / f"{v}-seed-0" / "summary.json").stat().st_mtime_ns
              for v in ("hybrid", "linear")]
    assert main(args) == 0  # the second time: read, not trained again
    assert stamps == [(tmp_path / "base" / f"{v}-seed-0" / "summary.json").stat().st_mtime_ns
                      for v in ("hybrid", "linear")]


def test_an_unknown_profile_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path), "--profiles", "base,nope"])
    assert e.value.code == 2 and "unknown profile(s) nope" in capsys.readouterr().err
