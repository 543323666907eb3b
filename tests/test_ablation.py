"""The demo table's runner: one ordinary run per variant and seed, mean and spread (slow)."""

import json

import pytest
from util import FAST, tiny_demo

from trainer.bench.ablation import main

pytestmark = pytest.mark.slow


def test_ablation_writes_the_table_and_reads_finished_runs_instead_of_repeating_them(tmp_path,
                                                                                     capsys):
    data = tiny_demo(tmp_path / "data", speakers=8, clips_per_speaker=8)
    args = ["--data", str(data), "--out", str(tmp_path / "abl"), "--seeds", "0,1",
            "--variants", "hybrid,late", *FAST, "--epochs", "1"]
    assert main(args) == 0
    doc = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    late = doc["variants"]["late"]
    assert [r["seed"] for r in late["runs"]] == [0, 1]
    f1 = [r["macro_f1"] for r in late["runs"]]
    assert late["summary"]["macro_f1"]["mean"] == pytest.approx(sum(f1) / 2)
    for seed in (0, 1):  # every run is a run directory trained with the variant's flags
        cfg = json.loads((tmp_path / "abl" / f"late-seed-{seed}" / "config.json").read_text())
        assert cfg["fusion"] == "late" and cfg["seed"] == seed and cfg["d_model"] == 32
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "`--fusion late`" in table and "±" in table
    stamp = (tmp_path / "abl" / "hybrid-seed-0" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # the second time: read, not trained again
    assert (tmp_path / "abl" / "hybrid-seed-0" / "summary.json").stat().st_mtime_ns == stamp


def test_unknown_variant_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--data", "x", "--out", str(tmp_path), "--variants", "hybrid,gru"])
    assert e.value.code == 2 and "unknown variant(s) gru" in capsys.readouterr().err
