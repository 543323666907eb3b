"""The weights' moving average (--ema): its arithmetic, the swap in and out, and its checkpoint."""

import pytest
import torch

from trainer.averaging import WeightAverage, checkpoint_weights, restore_weights


def model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    m.register_buffer("fixed", torch.arange(3.0))  # a buffer: the model's own, never averaged
    return m


def step(m, k):
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * (k + 1))


def test_the_average_follows_its_formula_from_the_first_step():
    m = model()
    ema = WeightAverage(m, 0.9)
    step(m, 0)
    ema.update()  # the first step's weights themselves
    expected = [p.detach().clone() for p in m.parameters()]
    for k in (1, 2, 3):
        step(m, k)
        ema.update()
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, m.parameters())]
    for a, e in zip(ema.avg, expected):
        torch.testing.assert_close(a, e)
    assert not torch.allclose(ema.avg[0], m[0].weight)  # the model keeps its own weights


def test_applied_swaps_the_average_in_and_the_weights_back_exactly():
    m = model()
    ema = WeightAverage(m, 0.5)
    for k in range(3):
        step(m, k)
        ema.update()
    own = {k: v.clone() for k, v in m.state_dict().items()}
    average = [a.clone() for a in ema.avg]
    with ema.applied():
        assert all(torch.equal(p, a) for p, a in zip(m.parameters(), average))
        inside = m(torch.ones(1, 3))
    assert all(torch.equal(a, b) for a, b in zip(ema.avg, average))
    for k, v in m.state_dict().items():
        assert torch.equal(v, own[k]), k
    assert not torch.allclose(inside, m(torch.ones(1, 3)))
    state = ema.state_dict()  # the average's parameters, the model's buffers
    assert torch.equal(state["0.weight"], ema.avg[0]) and torch.equal(state["fixed"], m.fixed)


def test_decay_0_is_off_and_a_decay_of_1_or_more_is_refused():
    m = model()
    ema = WeightAverage(m, 0.0)
    step(m, 0)
    ema.update()
    assert ema.avg is None and not ema.on
    with ema.applied():
        pass
    assert torch.equal(ema.state_dict()["0.weight"], m[0].weight)
    assert set(checkpoint_weights(ema)) == {"model"}  # as before --ema existed
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="ema decay"):
            WeightAverage(m, bad)


def test_a_checkpoint_holds_the_average_as_the_model_and_resumes_both(tmp_path):
    m = model()
    ema = WeightAverage(m, 0.8)
    for k in range(3):
        step(m, k)
        ema.update()
    ckpt = checkpoint_weights(ema)
    assert torch.equal(ckpt["model"]["0.weight"], ema.avg[0])  # what evaluate and export read
    assert torch.equal(ckpt["train_weights"]["0.weight"], m[0].weight) and ckpt["averaged"]
    torch.save(ckpt, tmp_path / "last.pt")
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)

    m2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    m2.register_buffer("fixed", torch.zeros(3))
    ema2 = WeightAverage(m2, 0.8)
    restore_weights(ema2, loaded, tmp_path / "last.pt")
    for a, b in zip(ema2.avg, ema.avg):
        assert torch.equal(a, b)
    for (k, v), (_, w) in zip(m2.state_dict().items(), m.state_dict().items()):
        assert torch.equal(v, w), k
    step(m, 3), step(m2, 3)
    ema.update(), ema2.update()  # and they go on alike
    assert all(torch.equal(a, b) for a, b in zip(ema2.avg, ema.avg))


def test_a_checkpoint_from_before_the_first_step_resumes_without_an_average(tmp_path):
    m = model()
    ema = WeightAverage(m, 0.8)
    ckpt = checkpoint_weights(ema)
    assert ckpt["averaged"] is False
    ema2 = WeightAverage(model(), 0.8)
    restore_weights(ema2, ckpt, tmp_path / "last.pt")
    assert ema2.avg is None
