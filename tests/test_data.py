"""Clip discovery, names, manifests and every kind of unusable clip (DESIGN.md section 2)."""

import json
from pathlib import Path

import numpy as np
import pytest
from util import write_clip

from trainer.data import LABELS, DataError, check_data, load_dataset, parse_name


def test_crema_and_ravdess_names_give_label_and_namespaced_speaker():
    assert parse_name("1001_DFA_ANG_XX") == ("ANG", "crema-d/1001")
    assert parse_name("1091_TSI_SAD_HI") == ("SAD", "crema-d/1091")
    assert parse_name("01-01-05-01-01-01-12") == ("ANG", "ravdess/12")
    assert parse_name("02-01-07-02-02-01-03") == ("DIS", "ravdess/03")
    assert parse_name("01-01-01-01-01-01-01") == ("NEU", "ravdess/01")
    assert parse_name("01-01-02-01-01-01-12") == "calm"
    assert parse_name("01-01-08-01-01-01-12") == "surprised"
    assert parse_name("some_clip") is None


def test_folder_with_both_styles_loads_recursively_and_excludes_calm_and_surprised(tmp_path):
    write_clip(tmp_path / "1001_DFA_ANG_XX.npz")
    write_clip(tmp_path / "1002_IEO_HAP_LO.npz", dtype=np.float64)  # float64 accepted
    write_clip(tmp_path / "Actor_12" / "01-01-04-01-01-01-12.npz")
    write_clip(tmp_path / "Actor_12" / "01-01-02-01-01-01-12.npz")  # calm
    write_clip(tmp_path / "Actor_12" / "01-01-08-01-01-01-12.npz")  # surprised
    ds = load_dataset(tmp_path)
    got = {(c.path, LABELS[c.label], c.speaker) for c in ds.clips}
    assert got == {("1001_DFA_ANG_XX.npz", "ANG", "crema-d/1001"),
                   ("1002_IEO_HAP_LO.npz", "HAP", "crema-d/1002"),
                   ("Actor_12/01-01-04-01-01-01-12.npz", "SAD", "ravdess/12")}
    assert dict(ds.excluded) == {"calm": 1, "surprised": 1}
    assert ds.skipped == []  # excluded clips are counted, not reported as broken
    assert all(c.audio.dtype == np.float32 for c in ds.clips)


def test_ravdess_songs_are_excluded_and_counted_like_calm_and_surprised(tmp_path):
    assert parse_name("01-02-05-01-01-01-12") == "song"  # vocal channel 02: sung, not spoken
    write_clip(tmp_path / "Actor_12" / "01-01-05-01-01-01-12.npz")  # speech
    write_clip(tmp_path / "Actor_12" / "01-02-05-01-01-01-12.npz")  # the same line, sung
    write_clip(tmp_path / "Actor_12" / "02-02-03-01-01-01-12.npz")
    ds = load_dataset(tmp_path)
    assert [c.path for c in ds.clips] == ["Actor_12/01-01-05-01-01-01-12.npz"]
    assert dict(ds.excluded) == {"song": 2} and ds.skipped == []


def test_same_actor_number_in_two_data_sets_is_two_speakers(tmp_path):
    write_clip(tmp_path / "1012_DFA_ANG_XX.npz")
    write_clip(tmp_path / "01-01-05-01-01-01-12.npz")
    assert {c.speaker for c in load_dataset(tmp_path).clips} == {"crema-d/1012", "ravdess/12"}


def test_manifest_gives_labels_speakers_and_splits(tmp_path):
    write_clip(tmp_path / "clips" / "a.npz")
    write_clip(tmp_path / "clips" / "b.npz")
    write_clip(tmp_path / "clips" / "c.npz")
    (tmp_path / "manifest.csv").write_text(
        "path,label,speaker,split\nclips/a.npz,HAP,iemocap/1,train\n"
        "clips/b.npz,SAD,iemocap/2,test\nclips/c.npz,XYZ,iemocap/2,test\n")
    ds = load_dataset(tmp_path)  # a folder holding manifest.csv uses it
    assert [(c.path, LABELS[c.label], c.speaker, c.split) for c in ds.clips] == [
        ("clips/a.npz", "HAP", "iemocap/1", "train"), ("clips/b.npz", "SAD", "iemocap/2", "test")]
    assert ds.skipped == [{"path": "clips/c.npz", "reason": "label 'XYZ' outside "
                           "ANG DIS FEA HAP NEU SAD"}]
    assert len(load_dataset(tmp_path / "manifest.csv").clips) == 2  # or the CSV itself


def test_manifest_without_required_columns_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,label\na.npz,HAP\n")
    with pytest.raises(DataError, match="lacks column.*speaker"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("rows, message", [
    ("a.npz,HAP,s/1,train\nb.npz,SAD\n", "line 3: 2 field(s), the header has 4"),
    ("a.npz,HAP,s/1,train,extra\n", "line 2: 5 field(s), the header has 4"),
    ("a.npz,HAP,s/1,train\nb.npz,SAD,s/2,validation\n",
     "line 3: split is 'validation'; use one of train/val/test on every row"),
    ("a.npz,HAP,s/1,train\nb.npz,SAD,s/2,\n", "line 3: split is empty; use one of"),
])
def test_bad_manifest_row_names_the_file_and_line(tmp_path, rows, message):
    write_clip(tmp_path / "a.npz")
    write_clip(tmp_path / "b.npz")
    (tmp_path / "manifest.csv").write_text("path,label,speaker,split\n" + rows)
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path)
    assert str(e.value).startswith(f"manifest {tmp_path / 'manifest.csv'} ")
    assert message in str(e.value)


def test_check_data_tells_a_bad_manifest_without_reading_a_clip(tmp_path):
    """What train and deploy check before anything is written: the same line load_dataset gives,
    from the manifest alone (the clips it names need not exist yet, nor be readable)."""
    (tmp_path / "junk.npz").write_bytes(b"not a clip")
    assert check_data(tmp_path) is None  # no manifest: the clips are load_dataset's business
    (tmp_path / "manifest.csv").write_text("path,label,speaker,split\na.npz,HAP,s/1,train\n"
                                           "b.npz,SAD,s/2,tset\n")
    for root in (tmp_path, tmp_path / "manifest.csv"):
        with pytest.raises(DataError, match=r"manifest .*manifest.csv line 3: split is 'tset'"):
            check_data(root)
    with pytest.raises(DataError, match="data path .*nope does not exist"):
        check_data(tmp_path / "nope")


def test_a_split_column_empty_on_every_row_means_a_computed_split(tmp_path):
    write_clip(tmp_path / "a.npz")
    write_clip(tmp_path / "b.npz")
    (tmp_path / "manifest.csv").write_text("path,label,speaker,split\n"
                                           "a.npz,HAP,s/1,\nb.npz,SAD,s/2, \n")
    assert [c.split for c in load_dataset(tmp_path).clips] == [None, None]


def test_timestamps_from_file_else_spread_over_the_clip(tmp_path):
    write_clip(tmp_path / "1001_DFA_ANG_XX.npz", t_a=50, t_v=10,
               video_timestamps=np.arange(10, dtype=np.float32) / 20)
    c = load_dataset(tmp_path, audio_fps=100).clips[0]
    np.testing.assert_allclose(c.video_t, np.arange(10) / 20)
    # No audio timestamps: 50 frames at 100 fps span 0.5 s, frame centres.
    np.testing.assert_allclose(c.audio_t, (np.arange(50) + 0.5) / 100, rtol=1e-6)


BROKEN = {
    "unreadable": (lambda p: p.write_bytes(b"not a zip"), "unreadable"),
    "truncated": (lambda p: p.write_bytes(write_clip(p).read_bytes()[:100]), "unreadable"),
    "no_video": (lambda p: np.savez(p, audio_features=np.ones((5, 8))), "missing video_features"),
    "empty": (lambda p: np.savez(p, audio_features=np.ones((0, 8)), video_features=np.ones((4, 6))),
              "audio_features is empty"),
    "nan": (lambda p: np.savez(p, audio_features=np.full((5, 8), np.nan),
                               video_features=np.ones((4, 6))), "non-finite"),
    "inf": (lambda p: np.savez(p, audio_features=np.ones((5, 8)),
                               video_features=np.full((4, 6), np.inf)), "non-finite"),
    "1d": (lambda p: np.savez(p, audio_features=np.ones(5), video_features=np.ones((4, 6))),
           "expected [T, F]"),
    "width": (lambda p: write_clip(p, f_v=7), "feature width"),
    "pickled": (lambda p: np.savez(p, audio_features=np.array([object()]),
                                   video_features=np.ones((4, 6))), "unreadable"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_each_kind_of_broken_clip_is_skipped_with_its_reason(tmp_path, kind):
    for i in range(3):
        write_clip(tmp_path / f"100{i}_DFA_ANG_XX.npz", seed=i)
    make, reason = BROKEN[kind]
    make(tmp_path / "1009_DFA_SAD_XX.npz")
    ds = load_dataset(tmp_path)
    assert len(ds.clips) == 3
    assert len(ds.skipped) == 1 and ds.skipped[0]["path"] == "1009_DFA_SAD_XX.npz"
    assert reason in ds.skipped[0]["reason"]


def test_unknown_file_name_without_manifest_is_skipped(tmp_path):
    write_clip(tmp_path / "1001_DFA_ANG_XX.npz")
    write_clip(tmp_path / "mystery.npz")
    ds = load_dataset(tmp_path)
    assert [s["path"] for s in ds.skipped] == ["mystery.npz"]
    assert "neither CREMA-D nor RAVDESS" in ds.skipped[0]["reason"]


def test_empty_folder_and_only_broken_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no clip files"):
        load_dataset(tmp_path)
    (tmp_path / "1001_DFA_ANG_XX.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="no usable clips.*1 skipped"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_float64_features_are_read_as_float32(tmp_path):
    p = write_clip(Path(tmp_path) / "1001_DFA_ANG_XX.npz", dtype=np.float64)
    c = load_dataset(tmp_path).clips[0]
    np.testing.assert_allclose(c.audio, np.load(p)["audio_features"], rtol=1e-6)


def _extracted(settings: dict) -> np.ndarray:
    from trainer.data import EXTRACTOR, clip_params_json

    return clip_params_json({"extractor": EXTRACTOR, "version": "0.3.0", "settings": settings,
                             "audio": {"name": "logmel"}, "video": {"name": "mediapipe"}})


def test_extraction_params_are_kept_and_clips_of_other_settings_skipped(tmp_path):
    # Same widths, other settings: the features mean other things, so the odd clip is skipped
    # with its reason, and the data set's extraction is the common one (a checkpoint keeps it).
    common = {"audio": "logmel", "video": "mediapipe", "video_rate": 15.0}
    for i, name in enumerate(("1001_DFA_ANG_XX", "1002_DFA_HAP_XX", "1003_DFA_SAD_XX")):
        write_clip(tmp_path / f"{name}.npz", seed=i, params=_extracted(common))
    write_clip(tmp_path / "1004_DFA_NEU_XX.npz", params=_extracted(dict(common, video_rate=30.0)))
    write_clip(tmp_path / "1005_DFA_FEA_XX.npz")  # no params: not made by extract
    ds = load_dataset(tmp_path)
    assert ds.extraction["settings"] == common
    assert sorted(c.path for c in ds.clips) == ["1001_DFA_ANG_XX.npz", "1002_DFA_HAP_XX.npz",
                                                 "1003_DFA_SAD_XX.npz"]
    reasons = {s["path"]: s["reason"] for s in ds.skipped}
    assert "video_rate\": 30.0" in reasons["1004_DFA_NEU_XX.npz"]
    assert "not made by trainer extract" in reasons["1005_DFA_FEA_XX.npz"]


def test_data_not_made_by_extract_has_no_extraction(tmp_path):
    write_clip(tmp_path / "1001_DFA_ANG_XX.npz",
               params=np.array(json.dumps({"source": "trainer.demo"})))
    write_clip(tmp_path / "1002_DFA_HAP_XX.npz", params=np.array("not json"))
    ds = load_dataset(tmp_path)
    assert ds.extraction is None and len(ds.clips) == 2 and ds.skipped == []
