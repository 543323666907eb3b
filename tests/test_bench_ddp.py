"""The DDP comparison trains both ways on the same clips, with replicas kept in step (slow: it
starts five Python processes; no timing is asserted)."""

import math

import pytest

from trainer.bench.ddp import WORLD, measure, shards, table

pytestmark = pytest.mark.slow


def test_single_process_and_ddp_both_train_the_same_clips():
    r = measure("smoke", seed=0, variants={"same_global_batch": 1})
    assert r["world"] == WORLD == 2 and r["backend"] == "gloo"
    v = r["variants"]["same_global_batch"]
    single, ddp, control = v["single"], v["ddp"], v["single_1_thread"]
    assert (single["processes"], single["threads_per_process"]) == (1, 2)
    assert (ddp["processes"], ddp["threads_per_process"]) == (2, 1)
    assert (control["processes"], control["threads_per_process"]) == (1, 1)
    # the same clips in the same number of steps: each rank took its half of every batch
    assert single["clips"] == ddp["clips"] == control["clips"] == r["clips"]
    assert single["steps"] == ddp["steps"] > 0
    for run in (single, ddp, control):
        # the untimed pass and each timed epoch, one loss per rank, all finite
        assert len(run["losses"]) == 1 + r["timed_epochs"]
        assert all(len(e) == run["processes"] for e in run["losses"])
        assert all(math.isfinite(x) for e in run["losses"] for x in e)
        assert len(run["epochs_seconds"]) == r["timed_epochs"]
        assert run["clips_per_second_best"] >= run["clips_per_second"] > 0
    # training moved the loss, and the all-reduce left both replicas with the same weights
    assert single["losses"][-1][0] < single["losses"][0][0]
    assert ddp["replicas_equal"] is True
    assert v["speedup"] > 0 and v["speedup_best"] > 0
    assert len(v["speedup_per_pair"]) == r["timed_epochs"]
    assert r["speedup"] == v["speedup"] and r["eval_clips_per_second"] > 0
    assert "same_global_batch" in table(r)


def test_each_rank_takes_every_other_clip_of_each_batch():
    batches = [[4, 9, 1, 7], [3, 0, 8], [2, 6]]
    halves = [shards(batches, r, 2) for r in range(2)]
    assert halves == [[[4, 1], [3, 8], [2]], [[9, 7], [0], [6]]]
    # together the ranks cover every clip once, in as many steps as the single process
    assert sorted(sum(halves[0] + halves[1], [])) == sorted(sum(batches, []))
    assert all(len(h) == len(batches) for h in halves)
