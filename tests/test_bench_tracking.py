"""trainer.bench.tracking_cost: TensorBoard's share of an epoch, measured on real epochs with the
real writer (smoke size: the figures are not judged here, `make bench` reads them)."""

from trainer.bench.tracking_cost import tracking_cost


def test_tracking_cost_times_the_writer_against_the_same_epochs():
    r = tracking_cost("smoke", threads=1)
    t = r["tracking"]
    assert t["tensorboard"] is True and t["pairs"] == 1
    assert r["tracking_overhead"] == t["fraction"]["median"]
    assert 0 < t["fraction"]["min"] <= t["fraction"]["median"] <= t["fraction"]["max"] < 1
    assert t["write_ms"]["median"] > 0 and t["epoch_seconds"]["median"] > 0
    assert t["open_seconds"] > 0 and -1 < t["paired_difference"]["median"] < 10
