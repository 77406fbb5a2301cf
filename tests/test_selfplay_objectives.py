"""Self-play win-rate regressions (alignkit.objectives.selfplay): values worked out by hand from the formulas."""

from __future__ import annotations

import pytest
import torch

from alignkit.objectives import SELFPLAY_LOSSES, online_ipo_loss, selfplay_loss, sppo_loss


def test_sppo_loss_by_hand():
    # (logratio - eta (P - 1/2))^2, eta = 2:
    #   logratio 0.5, P 0.75 -> target 0.5   -> 0
    #   logratio 0.0, P 1.0  -> target 1.0   -> 1
    #   logratio 1.0, P 0.25 -> target -0.5  -> 2.25
    #   logratio -0.3, P 0.5 -> target 0     -> 0.09
    logratio = torch.tensor([0.5, 0.0, 1.0, -0.3])
    win = torch.tensor([0.75, 1.0, 0.25, 0.5])
    expected = torch.tensor([0.0, 1.0, 2.25, 0.09])
    assert torch.allclose(sppo_loss(logratio, win, eta=2.0), expected)
    assert torch.allclose(selfplay_loss("sppo", logratio, win, eta=2.0), expected)
    # eta = 1 (default): targets 0.25, 0.5, -0.25, 0 -> 0.0625, 0.25, 1.5625, 0.09
    assert torch.allclose(selfplay_loss("sppo", logratio, win), torch.tensor([0.0625, 0.25, 1.5625, 0.09]))


def test_sppo_gradient_by_hand():
    # d/dl (l - t)^2 = 2 (l - t): l = 1, P = 0.75, eta = 4 -> t = 1 -> 0; l = 0, P = 0 -> t = -2 -> 4
    logratio = torch.tensor([1.0, 0.0], requires_grad=True)
    sppo_loss(logratio, torch.tensor([0.75, 0.0]), eta=4.0).sum().backward()
    assert torch.allclose(logratio.grad, torch.tensor([0.0, 4.0]))


def test_online_ipo_by_hand():
    # (h - (P - P') / tau)^2, h = l - l':
    #   l 0.3, l' 0.1, P 0.7, P' 0.3, tau 1   -> h 0.2, target 0.4 -> 0.04
    #   l 0, l' 0, P 1, P' 0.5, tau 0.5       -> h 0, target 1     -> 1
    assert torch.allclose(online_ipo_loss(torch.tensor([0.3]), torch.tensor([0.1]), torch.tensor([0.7]), torch.tensor([0.3]), tau=1.0), torch.tensor([0.04]))
    assert torch.allclose(online_ipo_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.5]), tau=0.5), torch.tensor([1.0]))
    # the hard label (P - P' = 1/2) is offline IPO's (h - 1/(2 tau))^2: h = 1, tau = 0.25 -> (1 - 2)^2 = 1
    assert torch.allclose(online_ipo_loss(torch.tensor([1.5]), torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([0.5]), tau=0.25), torch.tensor([1.0]))


def test_selfplay_errors():
    assert "sppo" in SELFPLAY_LOSSES.names()
    with pytest.raises(ValueError, match="did you mean 'sppo'"):
        selfplay_loss("spo", torch.zeros(1), torch.zeros(1))
    with pytest.raises(TypeError, match="beta"):
        selfplay_loss("sppo", torch.zeros(1), torch.zeros(1), beta=1.0)
    with pytest.raises(ValueError, match="eta"):
        sppo_loss(torch.zeros(1), torch.zeros(1), eta=0.0)
    with pytest.raises(ValueError, match="shape"):
        sppo_loss(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="tau"):
        online_ipo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), tau=-1.0)
