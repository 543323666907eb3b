"""trainer/config.py: settings from a file are type-checked against the dataclass, and ranges
that would fail later (a division by zero, a torch error) are one clear line up front."""

import pytest

from trainer.config import TrainConfig, defaults, load_file, model_settings, resolve, validate


def write(tmp_path, text, name="c.yaml"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_defaults_are_valid():
    validate(TrainConfig())


@pytest.mark.parametrize("text, message", [
    ('epochs: "three"\n', "epochs must be an integer, not 'three'"),
    ("epochs: 3.0\n", "epochs must be an integer, not 3.0"),
    ("epochs: true\n", "epochs must be an integer, not True"),  # a bool is no number here
    ("lr: yes\n", "lr must be a number, not True"),
    ("lr: 5e-4\n", "lr must be a number, not '5e-4' (unquoted; YAML reads 5e-4 as text"),
    ("bucket: 1\n", "bucket must be true or false, not 1"),
    ("model: 3\n", "model must be text, not 3"),
    ("epochs:\n", "epochs must be an integer, not None"),
    ("epochs: 3\n  lr: 2\n", "is not valid YAML: "),
    ("- 3\n", "must hold a mapping of settings"),
])
def test_file_values_of_the_wrong_type_name_the_file_and_setting(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as e:
        load_file(path)
    assert message in str(e.value) and str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    with pytest.raises(ValueError, match=r"not valid YAML: .* at line 2, column \d+$"):
        load_file(write(tmp_path, "epochs: 3\n  lr: 2\n"))


def test_an_int_is_a_float_and_is_stored_as_one(tmp_path):
    cfg = resolve(str(write(tmp_path, "lr: 1\nepochs: 7\nbucket: false\n")))
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.epochs == 7 and cfg.bucket is False
    cfg = resolve(str(write(tmp_path, '{"dropout": 0, "seed": 4}', "c.json")))
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float) and cfg.seed == 4


@pytest.mark.parametrize("setting, value, message", [
    ("heads", 0, "heads must be at least 1"),
    ("heads", -2, "heads must be at least 1"),
    ("d_model", 0, "d_model must be at least 1"),
    ("ensemble", 0, "ensemble must be at least 1"),
    ("threads", -1, "threads must be 0 (all cores) or more"),
    ("lr", float("nan"), "lr must be a finite number"),
    ("dropout", 1.0, "dropout must be in [0, 1)"),
    ("lr_factor", 0.0, "lr_factor must be in (0, 1)"),
    ("grad_clip", 0.0, "grad_clip must be positive"),
    ("audio_fps", 0.0, "audio_fps must be positive"),
    ("seed", -1, "seed must not be negative"),
    ("epochs", "3", "epochs must be an integer"),  # programmatic use is checked too
])
def test_values_that_would_fail_later_fail_at_once(setting, value, message):
    with pytest.raises(ValueError) as e:
        resolve(**{setting: value})
    assert message in str(e.value)


def test_flags_override_the_file(tmp_path):
    cfg = resolve(str(write(tmp_path, "epochs: 7\nheads: 2\n")), epochs=3)
    assert cfg.epochs == 3 and cfg.heads == 2 and cfg.lr == defaults()["lr"]


def test_a_cache_dir_that_is_a_file_fails_at_once(tmp_path):
    """train --data s3://... --cache-dir FILE: one line before anything runs, not a traceback at
    the first download."""
    (tmp_path / "notes.txt").write_text("x")
    for given in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "cache"):
        with pytest.raises(ValueError, match="is a file, not a folder"):
            validate(TrainConfig(data="s3://b/data/", out="runs/x", cache_dir=str(given)))
    validate(TrainConfig(data="s3://b/data/", out="runs/x", cache_dir=str(tmp_path / "new")))


def test_the_synchrony_head_is_on_by_default_and_off_where_it_would_change_an_ablation():
    def head(**kw):
        return model_settings(TrainConfig(**kw), 40, 64, 6)["sync_head"]
    assert head() is True
    assert head(sync_head=False) is False
    # a late fusion relates nothing in time, and one stream alone has nothing to correlate
    assert head(fusion="late") is False
    assert head(modality="audio") is False and head(modality="video") is False
    assert "sync_head" not in model_settings(TrainConfig(model="lstm"), 40, 64, 6)
