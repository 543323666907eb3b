"""An ensemble (``--ensemble N``): the mean of its members' probabilities, each member trained
on its own loss as if alone, and one synchrony head fitted for all."""

import numpy as np
import pytest
import torch

from trainer.batching import collate
from trainer.data import Clip
from trainer.ensemble import Ensemble, members, set_sync_weight
from trainer.losses import backward_step
from trainer.model import HybridModel, build_model
from trainer.train_sync import fit_sync


def clip(t_a, t_v, seed, label=0):
    rng = np.random.default_rng(seed)
    return Clip(f"c{seed}", label, f"s{seed % 3}",
                rng.normal(size=(t_a, 20)).astype(np.float32),
                rng.normal(size=(t_v, 30)).astype(np.float32),
                ((np.arange(t_a) + 0.5) / 25).astype(np.float32),
                ((np.arange(t_v) + 0.5) / 15).astype(np.float32))


def settings(**extra):
    return dict(audio_dim=20, video_dim=30, n_classes=6, d_model=32, heads=2, **extra)


def test_build_model_makes_members_with_their_own_weights():
    torch.manual_seed(0)
    model = build_model("hybrid", members=3, **settings())
    assert isinstance(model, Ensemble) and len(members(model)) == 3
    first = [m.head[-1].weight for m in members(model)]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert not isinstance(build_model("hybrid", **settings()), Ensemble)
    lstm = build_model("lstm", audio_dim=20, video_dim=30, n_classes=6)
    assert members(lstm) == [lstm]
    with pytest.raises(ValueError, match="at least 2 members"):
        Ensemble([HybridModel(**settings())])


def test_the_output_is_the_log_of_the_members_mean_probability():
    torch.manual_seed(0)
    model = build_model("hybrid", members=3, **settings(sync_head=True, sync_pcs=2)).eval()
    batch = collate([clip(40, 24, s, label=s % 6) for s in range(5)])
    with torch.no_grad():
        got = model(**batch).exp()
        want = torch.stack([torch.softmax(m(**batch), -1) for m in members(model)]).mean(0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.sum(1), torch.ones(5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("clip_norm", [1e9, 0.01])
def test_each_member_gets_the_gradient_of_its_own_loss_clipped_as_if_alone(clip_norm):
    torch.manual_seed(0)
    model = build_model("hybrid", members=2, **settings(sync_head=True, sync_pcs=2,
                                                        dropout=0.0)).train()
    batch = collate([clip(40, 24, s, label=s % 6) for s in range(6)])
    other = torch.zeros(6, dtype=torch.long)
    loss = backward_step(model, lambda k: (batch, other, 1.0), None, 2.0, clip_norm)
    together = [[p.grad.clone() for p in m.parameters()] for m in members(model)]
    alone = []
    for m, grads in zip(members(model), together):
        model.zero_grad(set_to_none=True)
        alone.append(backward_step(m, lambda k: (batch, other, 1.0), None, 2.0, clip_norm))
        for p, g in zip(m.parameters(), grads):
            torch.testing.assert_close(p.grad, g, atol=1e-7, rtol=1e-5)
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        if clip_norm < 1:  # each member's own gradient at the norm, not the pair's
            assert norm == pytest.approx(clip_norm, rel=1e-3)
    assert loss == pytest.approx(sum(alone) / 2)
    assert alone[0] != pytest.approx(alone[1])  # two models, two losses


def test_the_synchrony_head_is_fitted_once_for_all_members_and_weighted_alike():
    torch.manual_seed(0)
    model = build_model("hybrid", members=2, **settings(sync_head=True, sync_pcs=2))
    fit_sync(model, [clip(40, 24, s, label=s % 6) for s in range(24)])
    a, b = (m.sync.state_dict() for m in members(model))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["wa"].abs().sum() > 0  # fitted, not the zeros it starts at
    set_sync_weight(model, 3.0)
    assert [float(m.sync_weight) for m in members(model)] == [3.0, 3.0]
