"""The cost and time projection of a cross-validation run on AWS Batch: its arithmetic from a
bench.json, and its one-line errors."""

import json
import math

import pytest

from trainer.ops.pricing import FALLBACK
from trainer.ops.projection import main, project, read_bench


def fake_bench(tmp_path, eval_rate=300.0, **over):
    b = {"mode": "full", "machine": {"cpu": "test cpu", "threads": 2},
         "hybrid": {"clips_per_second": 100.0}, "ddp": {"eval_clips_per_second": eval_rate}}
    b.update(over)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(b))
    return str(path)


def test_a_task_is_its_epochs_of_training_and_validation_then_a_test_pass(tmp_path):
    bench = read_bench(fake_bench(tmp_path))
    # 10 speakers of 100 clips: 5 folds test 2 speakers each; fold_split validates on
    # round(0.15 * 10) = 2 speakers; 6 speakers train
    (row,) = project(bench, folds=5, seeds=(1,), epochs=(10,), instances=("c7i.xlarge",),
                     max_vcpus=4, overhead_minutes=2, clips=1000, speakers=10)
    assert (row["clips"]["train_clips"], row["clips"]["val_clips"],
            row["clips"]["test_clips"]) == pytest.approx((600, 200, 200))
    epoch = 600 / 100 + 200 / 300
    task = 10 * epoch + 200 / 300 + 120
    assert row["clips"]["epoch_seconds"] == pytest.approx(epoch)
    assert row["task_hours"] == pytest.approx(task / 3600)
    # 4 vCPUs at once, 2 per job: 5 tasks run as 2 + 2 + 1
    assert row["at_once"] == 2 and row["wall_hours"] == pytest.approx(3 * task / 3600)
    # a 2-vCPU job pays half of a 4-vCPU instance
    assert row["vcpu_hours"] == pytest.approx(5 * 2 * task / 3600)
    assert row["usd_on_demand"] == pytest.approx(5 * task / 3600 * FALLBACK["c7i.xlarge"] / 2)
    lo, hi = row["usd_spot"]
    assert lo == pytest.approx(0.3 * row["usd_on_demand"])
    assert hi == pytest.approx(0.7 * row["usd_on_demand"])


def test_more_seeds_and_epochs_scale_cost_and_slots_set_the_wall_clock(tmp_path):
    bench = read_bench(fake_bench(tmp_path))
    rows = project(bench, seeds=(1, 3), epochs=(20, 40), instances=("m7i.xlarge",),
                   max_vcpus=16, overhead_minutes=0)
    by = {(r["seeds"], r["epochs"]): r for r in rows}
    assert len(rows) == 4 and by[(3, 20)]["tasks"] == 15
    assert by[(3, 20)]["usd_on_demand"] == pytest.approx(3 * by[(1, 20)]["usd_on_demand"])
    # training and validation double with the epochs, the one test pass does not
    one = by[(1, 20)]
    test_h = one["clips"]["test_clips"] / 300 / 3600
    assert by[(1, 40)]["task_hours"] - test_h == pytest.approx(2 * (one["task_hours"] - test_h))
    # 16 vCPUs hold 8 jobs: 5 tasks in one wave, 15 in two
    assert by[(1, 20)]["wall_hours"] == pytest.approx(one["task_hours"])
    assert by[(3, 20)]["wall_hours"] == pytest.approx(2 * by[(3, 20)]["task_hours"])
    # m7i's vCPU-hour is dearer than c7i's: the same hours cost more
    (c7i,) = project(bench, seeds=(1,), epochs=(20,), instances=("c7i.xlarge",),
                     overhead_minutes=0)
    assert c7i["task_hours"] == one["task_hours"]
    assert one["usd_on_demand"] / c7i["usd_on_demand"] == pytest.approx(
        FALLBACK["m7i.xlarge"] / FALLBACK["c7i.xlarge"])


def test_slowdown_and_an_unmeasured_evaluation_rate(tmp_path):
    measured = read_bench(fake_bench(tmp_path, eval_rate=None))
    assert measured["eval_clips_per_second"] == 300.0 and not measured["eval_measured"]
    base, slow = (project(measured, seeds=(1,), epochs=(10,), overhead_minutes=0,
                          slowdown=s)[0] for s in (1.0, 2.0))
    assert slow["task_hours"] == pytest.approx(2 * base["task_hours"])
    assert math.isclose(slow["usd_on_demand"], 2 * base["usd_on_demand"])


def test_the_command_prints_the_table_and_bad_input_is_one_line(tmp_path, capsys):
    path = fake_bench(tmp_path)
    assert main(["--bench", path, "--seeds", "1", "--epochs", "10"]) == 0
    out = capsys.readouterr().out
    assert "| m7i.xlarge | 5 x 1 = 5 | 10 |" in out and "Projected, not measured" in out
    # a training rate given on the command line replaces bench.json's: twice the rate, less time
    assert main(["--bench", path, "--seeds", "1", "--epochs", "10", "--overhead-minutes", "0",
                 "--clips-per-second", "200"]) == 0
    faster = capsys.readouterr().out
    assert "200.0 training clips/s (given)" in faster and faster != out
    bad = [["--bench", str(tmp_path / "missing.json")],
           ["--bench", fake_bench(tmp_path, hybrid={})],
           ["--bench", path, "--instances", "x9.huge"],
           ["--bench", path, "--max-vcpus", "1"]]
    for argv in bad:
        assert main(argv) == 2
        err = capsys.readouterr().out.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
