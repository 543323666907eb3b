"""trainer/demo.py: every clip the demo says it wrote is a file of its own.

    .venv/bin/python -m pytest tests/test_demo.py
"""

from __future__ import annotations

from trainer.data import load_dataset
from trainer.demo import Shape, make_demo_data


def test_many_clips_of_one_emotion_never_overwrite_each_other(tmp_path):
    """RAVDESS names have 8 per actor and emotion; a speaker with more clips of one emotion
    must still get a file per clip (it used to overwrite the first ones, silently)."""
    shape = Shape(audio_fps=20.0, audio_dim=4, video_fps=10.0, video_dim=4)
    info = make_demo_data(tmp_path, seed=0, speakers=4, clips_per_speaker=60, shape=shape)
    files = [p for p in tmp_path.rglob("*.npz") if "broken" not in p.parts]
    assert len(files) == info["clips"] + info["excluded"]
    ds = load_dataset(tmp_path)
    assert len(ds.clips) == info["clips"]
    ravdess = [c for c in ds.clips if c.speaker.startswith("ravdess/")]
    assert max(sum(c.label == y for c in ravdess if c.speaker == s)
               for s in {c.speaker for c in ravdess} for y in range(6)) > 8
