"""The synchrony features (trainer.synchrony) and the head around training (trainer.train_sync):
directions from class means (only the dimensions that stand out) and from the frames' variation
within clips, correlations that tell synchronous events from asynchronous ones
across frame rates, padding invariance, and the head's weight chosen on validation."""

from types import SimpleNamespace

import numpy as np
import torch

from trainer.batching import collate
from trainer.data import Clip
from trainer.model import HybridModel
import trainer.synchrony
from trainer.synchrony import SyncFeatures
from trainer.train_sync import WEIGHTS, choose_sync_weight, fit_sync, within_cov

DA, DV = 12, 20
A_FPS, V_FPS = 25.0, 15.0


def clip(rng, label: int, sync: bool, seconds: float = 3.0) -> Clip:
    """Background noise; three brief events along the class's own direction in each stream
    (audio: dimension ``label``, video: dimension ``label + 6``), at the same moments in both
    streams when ``sync``, else at other moments."""
    ta = (np.arange(int(seconds * A_FPS)) + 0.5) / A_FPS
    tv = (np.arange(int(seconds * V_FPS)) + 0.5) / V_FPS
    audio = rng.normal(size=(ta.size, DA))
    video = rng.normal(size=(tv.size, DV))
    slots = rng.permutation(np.arange(0.2, seconds - 0.4, 0.45))[:6]
    a_on = slots[:3]
    v_on = a_on if sync else slots[3:]
    for on in a_on:
        audio[(ta >= on) & (ta < on + 0.2), label] += 2.5
    for on in v_on:
        video[(tv >= on) & (tv < on + 0.2), label + 6] += 2.5
    return Clip("x.npz", label, "s", audio.astype(np.float32), video.astype(np.float32),
                ta.astype(np.float32), tv.astype(np.float32))


def features(sync: SyncFeatures, clips: list[Clip]) -> torch.Tensor:
    b = collate(clips)
    with torch.no_grad():
        return sync(b["audio"], b["audio_mask"], b["audio_t"], b["video"], b["video_mask"],
                    b["video_t"])


def test_the_directions_are_the_class_means_and_the_correlation_tells_sync_from_async():
    rng = np.random.default_rng(0)
    train = [clip(rng, y, sync=bool(i % 2)) for i in range(240) for y in [i % 6]]
    sync = SyncFeatures(DA, DV, 6)
    sync.fit(torch.from_numpy(np.stack([c.audio.mean(0) for c in train])),
             torch.from_numpy(np.stack([c.video.mean(0) for c in train])),
             torch.tensor([c.label for c in train]))
    # each class's direction points at its own dimension in each stream
    assert (sync.wa.abs().argmax(1) == torch.arange(6)).all()
    assert (sync.wv.abs().argmax(1) == torch.arange(6) + 6).all()
    assert torch.allclose(sync.wa.norm(dim=1), torch.ones(6))
    # fresh clips (other frame rates in the two streams): the class's own audio x video
    # correlation is high when the events coincide and near 0 when they do not
    fresh = [clip(rng, 2, sync=s) for s in [True] * 30 + [False] * 30]
    own = features(sync, fresh)[:, 2 * 6 + 2]
    assert own[:30].mean() > 0.3 and own[30:].mean() < 0.0  # apart: events meet pauses
    assert ((own > 0.15) == torch.arange(60).lt(30)).float().mean() >= 0.95
    # standardised by the training clips' own spread
    sync.set_scale(features(sync, train))
    scaled = features(sync, train)
    assert torch.allclose(scaled.mean(0), torch.zeros(36), atol=1e-4)
    assert torch.allclose(scaled.std(0), torch.ones(36), atol=1e-3)


def cue_means(rng, n: int = 600, dim: int = 200, amp: float = 1.0):
    """Clip means: noise in ``dim`` dimensions; class k adds ``amp`` in dimensions 2k and 2k+1."""
    labels = np.arange(n) % 6
    x = rng.normal(size=(n, dim))
    for k in range(6):
        x[labels == k, 2 * k:2 * k + 2] += amp
    return torch.from_numpy(x), torch.from_numpy(labels)


def test_class_directions_keep_only_the_dimensions_that_stand_out(monkeypatch):
    """A cue in 12 of 200 dimensions: the noise in the other 188 is left out of the directions
    (with the threshold at 0 it is most of each direction)."""
    means, labels = cue_means(np.random.default_rng(4))

    def outside(threshold):
        monkeypatch.setattr(trainer.synchrony, "THRESHOLD", threshold)
        sync = SyncFeatures(200, 200, 6)
        sync.fit(means, means, labels)
        assert torch.allclose(sync.wa.norm(dim=1), torch.ones(6))
        assert (sync.wa.abs().argmax(1) // 2 == torch.arange(6)).all()
        return float((sync.wa[:, 12:] ** 2).sum(1).max())  # worst class's share outside the cue

    kept, whole = outside(3.0), outside(0.0)
    assert kept < 0.15 and whole > 0.5, (kept, whole)


def test_a_class_direction_with_nothing_standing_out_keeps_the_whole_mean():
    """Noise only, in 4 dimensions: no class mean stands out anywhere (checked), so each
    direction is the whole centred class mean rather than nothing."""
    means, labels = cue_means(np.random.default_rng(5), dim=4, amp=0.0)
    x = means - means.mean(0)
    y = torch.nn.functional.one_hot(labels, 6).double()
    y = y - y.mean(0)
    d = y.T @ x
    assert (d / (x.std(0) * y.norm(dim=0)[:, None])).abs().max() < trainer.synchrony.THRESHOLD
    sync = SyncFeatures(4, 4, 6)
    sync.fit(means, means, labels)
    torch.testing.assert_close(sync.wa, (d / d.norm(dim=1, keepdim=True)).float())


def test_principal_directions_find_brief_events_of_every_class():
    """Events along one pattern (4 of 30 dimensions, amplitude 0.8 against a background of 1),
    a few frames each, in clips of every class: the first principal direction is the pattern,
    though no class mean differs along it."""
    rng = np.random.default_rng(6)
    pattern = np.zeros(30)
    pattern[[3, 11, 17, 25]] = [1.0, -1.0, 1.0, 1.0]
    streams = []
    for _ in range(300):
        x = rng.normal(size=(75, 30))
        for on in rng.choice(70, 4, replace=False):
            x[on:on + 3] += 0.8 * pattern
        streams.append(x)
    cov = within_cov(streams)
    sync = SyncFeatures(30, 30, 6, pcs=2)
    means = torch.from_numpy(np.stack([x.mean(0) for x in streams]))
    sync.fit(means, means, torch.arange(300) % 6, cov, cov)
    assert sync.wa.shape == (8, 30) and sync.mu.shape == (6 * 6 + 2 * 2,)
    first = sync.wa[6].double()
    unit = torch.from_numpy(pattern / 2)
    assert abs(float(first @ unit)) > 0.95
    assert first[first.abs().argmax()] > 0  # one sign, whatever eigh returned
    assert torch.equal(sync.wv, sync.wa)


def test_a_stream_narrower_than_the_principal_directions_still_gives_features():
    rng = np.random.default_rng(7)
    train = [clip(rng, i % 6, sync=True) for i in range(60)]
    narrow = [Clip(c.path, c.label, c.speaker, c.audio, c.video[:, :2], c.audio_t, c.video_t)
              for c in train]
    model = HybridModel(DA, 2, 6, d_model=16, heads=2, sync_head=True, sync_pcs=3)
    fit_sync(model, narrow)
    assert (model.sync.wv[6:8].norm(dim=1) > 0.99).all() and not model.sync.wv[8].any()
    f = features(model.sync, narrow)
    assert f.shape == (60, 36 + 9) and torch.isfinite(f).all()


def test_a_clip_gives_the_same_features_alone_and_padded_in_a_batch():
    rng = np.random.default_rng(1)
    train = [clip(rng, i % 6, sync=True) for i in range(60)]
    sync = SyncFeatures(DA, DV, 6)
    sync.fit(torch.from_numpy(np.stack([c.audio.mean(0) for c in train])),
             torch.from_numpy(np.stack([c.video.mean(0) for c in train])),
             torch.tensor([c.label for c in train]))
    short, long = clip(rng, 1, sync=True, seconds=2.0), clip(rng, 3, sync=False, seconds=4.0)
    alone = features(sync, [short])
    padded = features(sync, [short, long])[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=0)


def test_the_weight_on_validation_takes_the_head_when_it_alone_is_right():
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    clips = [clip(rng, y, sync=True) for y in range(6) for _ in range(4)]
    model = HybridModel(DA, DV, 6, d_model=16, heads=2, sync_head=True).eval()
    fit_sync(model, clips)
    with torch.no_grad():
        # the rest of the model says the same for every clip; the head reads the class's own
        # audio x video correlation (feature 7 * y), which is high only for class y
        model.head[-1].weight.zero_()
        model.head[-1].bias.copy_(torch.tensor([3.0, 0, 0, 0, 0, 0]))
        model.sync_out[-1].weight.zero_()
        model.sync_out[-1].bias.zero_()
        for y in range(6):
            model.sync_out[-1].weight[y, 7 * y] = 5.0
    cfg = SimpleNamespace(batch_size=8, modality="both")
    choice = choose_sync_weight(model, clips, cfg)
    chosen, scores = choice["weight"], choice["validation_macro_f1"]
    # 0 leaves every clip ANG; any weight past the bias's 3 gets every clip right, and among
    # the tied weights the one the head trained at (1) is taken when it is among them
    assert chosen != 0.0 and chosen in WEIGHTS
    assert float(model.sync_weight) == chosen
    assert scores[str(chosen)] == 1.0 > scores["0.0"] and set(scores) == {str(w) for w in WEIGHTS}
    pred = model(**collate(clips)).argmax(1)
    assert (pred == torch.tensor([c.label for c in clips])).float().mean() == 1.0


def test_a_model_without_a_head_is_left_alone():
    model = HybridModel(DA, DV, 6, d_model=16, heads=2)
    rng = np.random.default_rng(3)
    clips = [clip(rng, y, sync=True) for y in range(6)]
    fit_sync(model, clips)  # nothing to fit
    assert choose_sync_weight(model, clips, SimpleNamespace(batch_size=8, modality="both")) is None
    assert "sync_weight" not in model.state_dict()


def test_at_weight_0_evaluation_skips_the_head_and_says_what_it_said_with_it():
    torch.manual_seed(0)
    rng = np.random.default_rng(4)
    clips = [clip(rng, y, sync=y % 2 == 0) for y in range(6)]
    model = HybridModel(DA, DV, 6, d_model=16, heads=2, dropout=0.0, sync_head=True).eval()
    fit_sync(model, clips)
    calls = []
    model.sync.register_forward_hook(lambda *_: calls.append(1))
    batch = collate(clips)
    with torch.no_grad():
        rest, head = model(**batch, parts=True)  # what training reads: both parts, always
        model.sync_weight.fill_(0.0)
        calls.clear()
        skipped = model(**batch)
        assert not calls  # not computed at weight 0 ...
        torch.testing.assert_close(skipped, rest, rtol=0, atol=0)  # ... the same to the bit
        model.sync_weight.fill_(2.0)
        torch.testing.assert_close(model(**batch), rest + 2.0 * head)
        assert calls
        model.sync_weight.fill_(0.0)
        calls.clear()
        model.train()(**batch, parts=True)  # training reads it whatever the weight
        assert calls
