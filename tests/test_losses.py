"""Focal loss against a direct computation, and its reduction to cross-entropy."""

import math

import torch
import torch.nn.functional as F

from trainer.losses import focal_loss, inverse_frequency_weights, mixed_focal_loss


def test_focal_loss_matches_the_formula_computed_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([0, 2])
    alpha = torch.tensor([0.5, 1.0, 2.0])
    expected = 0.0
    for row, y in zip(logits.tolist(), target.tolist()):
        p = math.exp(row[y]) / sum(math.exp(v) for v in row)
        expected += -alpha[y].item() * (1 - p) ** 2 * math.log(p)
    torch.testing.assert_close(focal_loss(logits, target, alpha, gamma=2.0),
                               torch.tensor(expected / 2))


def test_gamma_zero_without_weights_is_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 6), torch.randint(0, 6, (16,))
    torch.testing.assert_close(focal_loss(logits, target, None, gamma=0.0),
                               F.cross_entropy(logits, target))


def test_focal_loss_down_weights_easy_examples():
    easy = torch.tensor([[5.0, 0.0]])
    hard = torch.tensor([[0.0, 0.0]])
    y = torch.tensor([0])
    ratio_focal = focal_loss(easy, y) / focal_loss(hard, y)
    ratio_ce = F.cross_entropy(easy, y) / F.cross_entropy(hard, y)
    assert ratio_focal < ratio_ce / 100


def test_inverse_frequency_weights():
    w = inverse_frequency_weights([0, 0, 0, 1, 2, 2], n_classes=4)
    # N / (C_present * n_c) = 6 / (3 * n_c); the absent class gets 0.
    torch.testing.assert_close(w, torch.tensor([6 / 9, 6 / 3, 6 / 6, 0.0]))


def test_mixed_focal_loss_weighs_both_labels_by_lam():
    torch.manual_seed(0)
    logits, y, y2 = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 4]), torch.tensor([5, 4, 3, 2, 1])
    alpha = torch.rand(6) + 0.5
    torch.testing.assert_close(mixed_focal_loss(logits, y, y2, 1.0, alpha), focal_loss(logits, y, alpha))
    torch.testing.assert_close(mixed_focal_loss(logits, y, y2, 0.7, alpha),
                               0.7 * focal_loss(logits, y, alpha) + 0.3 * focal_loss(logits, y2, alpha))
