"""The command line as a user meets it: help, and one clear line for every bad input."""

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from util import write_clip

from trainer.demo import make_demo_data


def cli(*args):
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True,
                          text=True, timeout=120)


def one_line_error(r, code, text):
    assert r.returncode == code, r.stderr
    lines = [x for x in r.stderr.splitlines() if "error" in x]
    assert len(lines) == 1 and text in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_every_verb_has_help_with_examples_and_defaults():
    for verb in ("train", "evaluate", "predict", "demo-data"):
        r = cli(verb, "--help")
        assert r.returncode == 0 and "Examples:" in r.stdout, verb
    r = cli("train", "--help")
    for shown in ("--epochs EPOCHS", "(default: 50)", "(default: 24)", "(default: 0.0005)",
                  "(default: 10)", "(default: speaker)", "(default: hybrid)", "--resume"):
        assert shown in r.stdout, shown


def test_empty_folder(tmp_path):
    one_line_error(cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "r")), 1,
                   "no clip files")


def test_folder_of_only_broken_files(tmp_path):
    (tmp_path / "1001_DFA_ANG_XX.npz").write_bytes(b"junk")
    write_clip(tmp_path / "mystery.npz")
    one_line_error(cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "r")), 1,
                   "no usable clips")


def test_missing_data_path(tmp_path):
    one_line_error(cli("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")),
                   1, "does not exist")


def test_wrong_model(tmp_path):
    one_line_error(cli("train", "--data", str(tmp_path), "--out", "r", "--model", "gru"), 2,
                   "invalid choice: 'gru'")


def test_bad_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("epochz: 3\n")
    one_line_error(cli("train", "--config", str(tmp_path / "c.yaml"), "--data", str(tmp_path),
                       "--out", "r"), 1, "unknown setting(s) epochz")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_unreadable_checkpoint(tmp_path, content):
    ckpt = tmp_path / "best.pt"
    if content is not None:
        ckpt.write_bytes(content)
    write_clip(tmp_path / "data" / "1001_DFA_ANG_XX.npz")
    for args in (["evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "data")],
                 ["predict", "--checkpoint", str(ckpt), str(tmp_path / "data")]):
        one_line_error(cli(*args), 1, "checkpoint")


def test_checkpoint_of_an_earlier_model_version_is_one_clear_line(tmp_path):
    import torch

    from trainer.model import build_model

    settings = {"audio_dim": 8, "video_dim": 6, "n_classes": 6}
    state = build_model("hybrid", **settings).state_dict()
    state["a2v.slope_learned"] = state.pop("a2v.slope")  # as a parameter of an older version
    ckpt = tmp_path / "best.pt"
    torch.save({"model": state, "model_name": "hybrid", "model_settings": settings,
                "normalizer": {}, "labels": ["ANG"]}, ckpt)
    write_clip(tmp_path / "data" / "1001_DFA_ANG_XX.npz")
    one_line_error(cli("evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "data")),
                   1, "does not fit this version of the HybridModel")


def test_checkpoint_of_the_stride_version_is_one_clear_line(tmp_path):
    """0.1 checkpoints pooled by --audio-stride/--video-stride: loading one says so and how."""
    import torch

    settings = {"audio_dim": 8, "video_dim": 6, "n_classes": 6, "audio_stride": 4,
                "video_stride": 2}
    ckpt = tmp_path / "best.pt"
    torch.save({"model": {}, "model_name": "hybrid", "model_settings": settings,
                "normalizer": {}, "labels": ["ANG"]}, ckpt)
    write_clip(tmp_path / "data" / "1001_DFA_ANG_XX.npz")
    for args in (["evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "data")],
                 ["predict", "--checkpoint", str(ckpt), str(tmp_path / "data")],
                 ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]):
        one_line_error(cli(*args), 1, "--audio-stride/--video-stride")


def test_too_few_speakers_suggests_random_split(tmp_path):
    for i, name in enumerate(["1001_DFA_ANG_XX", "1001_IEO_SAD_XX", "1002_DFA_ANG_XX",
                              "1002_IEO_SAD_XX"]):
        write_clip(tmp_path / f"{name}.npz", seed=i)
    one_line_error(cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "r")), 1,
                   "at least 3 speakers")


def test_demo_data_has_both_name_styles_imbalance_and_broken_files(tmp_path):
    r = cli("demo-data", "--out", str(tmp_path))
    assert r.returncode == 0 and "864 clips" in r.stdout
    from trainer.data import load_dataset

    ds = load_dataset(tmp_path)
    speakers = {c.speaker.split("/")[0] for c in ds.clips}
    assert speakers == {"crema-d", "ravdess"}
    counts = [sum(c.label == k for c in ds.clips) for k in range(6)]
    assert max(counts) > 1.5 * min(counts)  # imbalanced
    assert len(ds.skipped) == 5 and sum(ds.excluded.values()) == 6
    lengths = [c.audio.shape[0] for c in ds.clips]
    assert max(lengths) > 1.8 * min(lengths)  # variable length (2 to 4 s)


def test_demo_classes_need_audio_video_and_their_timing():
    """Audio alone narrows a class to three, video alone to three, both without timing to two
    of them (ANG/DIS, FEA/HAP) for four classes: only timing names all six."""
    from trainer.demo import cues

    triples = [cues(k) for k in range(6)]
    for stream in (0, 1):
        assert sorted(Counter(t[stream] for t in triples).values()) == [3, 3]
    without_timing = Counter(t[:2] for t in triples)
    assert sorted(without_timing.values()) == [1, 1, 2, 2]
    assert len(set(triples)) == 6


def test_demo_timing_is_the_only_difference_of_the_timing_pairs(tmp_path):
    """Synchronous classes have every video cue onset within 40 ms of an audio cue onset; the
    asynchronous ones none within 0.4 s; each stream alone is made the same way in both."""
    import numpy as np

    from trainer.demo import CLASSES, _Maker, Shape

    maker = _Maker(0, Shape())
    for label, (_, _, timing) in enumerate(CLASSES):
        for _ in range(20):
            a_on, a_len, v_on, v_len = maker._events(label, float(maker.rng.uniform(2, 4)))
            near = np.abs(v_on[:, None] - a_on[None, :]).min(1)
            assert len(a_on) == len(v_on) >= 2
            assert ((a_len >= 0.1) & (a_len <= 0.3)).all() and ((v_len >= 0.1) & (v_len <= 0.3)).all()
            if timing == "sync":
                assert (near <= 0.04 + 1e-9).all()
            elif timing == "async":
                assert (near >= 0.4).all()


def test_demo_data_shape_options(tmp_path):
    r = cli("demo-data", "--out", str(tmp_path), "--speakers", "3", "--clips-per-speaker", "2",
            "--audio-fps", "100", "--audio-dim", "89", "--video-fps", "15", "--video-dim", "512")
    assert r.returncode == 0, r.stderr
    from trainer.data import load_dataset

    c = load_dataset(tmp_path).clips[0]
    assert c.audio.shape[1] == 89 and c.video.shape[1] == 512
    assert abs(np.diff(c.audio_t).mean() - 0.01) < 1e-4
    assert abs(np.diff(c.video_t).mean() - 1 / 15) < 1e-4
    one_line_error(cli("demo-data", "--out", str(tmp_path), "--video-fps", "0"), 1,
                   "--video-fps must be positive")


def test_demo_speaker_is_most_of_the_video_variance(tmp_path):
    make_demo_data(tmp_path, speakers=6, clips_per_speaker=6)
    from trainer.data import load_dataset

    clips = load_dataset(tmp_path).clips
    frames = np.concatenate([c.video for c in clips])
    within = np.concatenate([c.video - np.concatenate([d.video for d in clips
                                                       if d.speaker == c.speaker]).mean(0)
                             for c in clips])
    assert within.var(0).sum() < 0.5 * frames.var(0).sum()




def _manifest(tmp_path, rows: str):
    for name in ("a", "b", "c"):
        write_clip(tmp_path / f"{name}.npz")
    (tmp_path / "manifest.csv").write_text("path,label,speaker,split\n" + rows)
    return tmp_path / "manifest.csv"


BAD_INPUT = {
    "yaml_syntax": "config file {d}/c.yaml is not valid YAML: ",
    "epochs_text": "config file {d}/c.yaml: epochs must be an integer, not 'three'",
    "lr_bool": "config file {d}/c.yaml: lr must be a number, not True",
    "bucket_int": "config file {d}/c.yaml: bucket must be true or false, not 1",
    "json_syntax": "config file {d}/c.json is not valid JSON: ",
    "heads_0": "heads must be at least 1, not 0",
    "threads_neg": "threads must be 0 (all cores) or more, not -1",
    "manifest_short_row": "manifest {d}/manifest.csv line 3: 2 field(s), the header has 4",
    "manifest_bad_split": "manifest {d}/manifest.csv line 4: split is 'tset'; use one of "
                          "train/val/test",
    "manifest_partial_split": "manifest {d}/manifest.csv line 2: split is empty; use one of",
}


def bad_input(tmp_path, case: str) -> tuple[str, list[str], str]:
    """(--data, other flags, the one error line expected) of one bad training input."""
    data, extra = tmp_path, []
    if case == "yaml_syntax":
        (tmp_path / "c.yaml").write_text("epochs: 3\nlr: [0.1\n")
    elif case == "epochs_text":
        (tmp_path / "c.yaml").write_text('epochs: "three"\n')
    elif case == "lr_bool":
        (tmp_path / "c.yaml").write_text("lr: yes\n")
    elif case == "bucket_int":
        (tmp_path / "c.yaml").write_text("bucket: 1\n")
    elif case == "json_syntax":
        (tmp_path / "c.json").write_text('{"epochs": 3,}')
    elif case == "heads_0":
        extra = ["--heads", "0"]
    elif case == "threads_neg":
        extra = ["--threads", "-1"]
    elif case == "manifest_short_row":
        data = _manifest(tmp_path, "a.npz,HAP,s/1,train\nb.npz,SAD\n")
    elif case == "manifest_bad_split":
        data = _manifest(tmp_path, "a.npz,HAP,s/1,train\nb.npz,SAD,s/2,val\nc.npz,SAD,s/3,tset\n")
    elif case == "manifest_partial_split":
        data = _manifest(tmp_path, "a.npz,HAP,s/1,\nb.npz,SAD,s/2,val\nc.npz,SAD,s/3,test\n")
    config = [p for p in (tmp_path / "c.yaml", tmp_path / "c.json") if p.exists()]
    if config:
        extra = ["--config", str(config[0])]
    return str(data), extra, "error: " + BAD_INPUT[case].format(d=tmp_path)


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_1(tmp_path, case):
    data, extra, expected = bad_input(tmp_path, case)
    r = cli("train", "--data", data, "--out", str(tmp_path / "run"), *extra)
    one_line_error(r, 1, expected)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_uploads_nothing_to_an_s3_run_directory(s3_bucket, s3_client, tmp_path, case):
    """Issue 12's bad-input list against a real S3 stand-in (the moto server over HTTP): the
    same one line and exit 1, and not one object under the bucket (no status.json, no
    train.log of a run that never started)."""
    data, extra, expected = bad_input(tmp_path, case)
    r = cli("train", "--data", data, "--out", f"s3://{s3_bucket}/runs/x/", *extra)
    one_line_error(r, 1, expected)
    listed = s3_client.list_objects_v2(Bucket=s3_bucket)
    assert [o["Key"] for o in listed.get("Contents", [])] == []


@pytest.mark.parametrize("argv", [
    [], ["--epochs", "30", "--model", "lstm", "--lr", "1e-3"], ["--resume", "--no-bucket"],
    ["--data", "s3://bucket/not/here/", "--out", "/nowhere/run"],  # neither is looked at
])
def test_check_train_args_accepts_good_flags(argv):
    from trainer.flags import check_train_args
    from trainer.config import TrainConfig

    cfg = check_train_args(argv)  # the resolved settings, as train would run them
    assert isinstance(cfg, TrainConfig)
    if "--epochs" in argv:
        assert (cfg.epochs, cfg.model, cfg.lr) == (30, "lstm", 1e-3)


@pytest.mark.parametrize("argv, message", [
    (["--epocs", "30"], "unrecognized arguments: --epocs 30"),
    (["--epochs", "three"], "argument --epochs: invalid int value: 'three'"),
    (["--model", "gru"], "invalid choice: 'gru'"),
    (["--heads", "0"], "heads must be at least 1, not 0"),
    (["--threads", "-1"], "threads must be 0 (all cores) or more"),
    (["--d-model", "30", "--heads", "4"], "d_model must be even and divisible by heads"),
    (["--epochs"], "expected one argument"),
    (["--help"], "unrecognized arguments: --help"),  # never prints usage and exits
    (["--config", "/no/such/c.yaml"], "config file /no/such/c.yaml does not exist"),
])
def test_check_train_args_is_one_line_of_value_error(argv, message):
    from trainer.flags import check_train_args

    with pytest.raises(ValueError) as e:
        check_train_args(argv)
    text = str(e.value)
    assert text.startswith("training args: ") and message in text and "\n" not in text


def test_check_train_args_reads_the_config_file(tmp_path):
    from trainer.flags import check_train_args

    (tmp_path / "c.yaml").write_text('epochs: "three"\n')
    with pytest.raises(ValueError, match="epochs must be an integer, not 'three'"):
        check_train_args(["--config", str(tmp_path / "c.yaml")])
    (tmp_path / "c.yaml").write_text("epochs: 3\nlr: 1\n")
    check_train_args(["--config", str(tmp_path / "c.yaml")])
