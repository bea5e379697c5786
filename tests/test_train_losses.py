"""Each DINOv2 loss term against a hand computation or a float64 reference of the official formula."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinoret.trainer.heads import DINOHead
from dinoret.trainer.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss, sinkhorn_knopp


def _sinkhorn_reference(logits: np.ndarray, temp: float, n_iterations: int) -> np.ndarray:
    """``dinov2/loss/dino_clstoken_loss.py`` line by line, in float64, one process."""
    q = np.exp(logits / temp).T
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(n_iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    q *= b
    return q.T


def test_sinkhorn_matches_reference_and_balances_prototypes() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 5, generator=g)
    q = sinkhorn_knopp(logits, temp=0.5)
    ref = _sinkhorn_reference(logits.double().numpy(), 0.5, 3)
    np.testing.assert_allclose(q.numpy(), ref, rtol=1e-5, atol=1e-7)
    # Rows (samples) are distributions.
    np.testing.assert_allclose(q.sum(1).numpy(), np.ones(12), atol=1e-6)
    # With enough iterations every prototype receives B/K of the mass.
    q100 = sinkhorn_knopp(logits, temp=0.5, n_iterations=100)
    np.testing.assert_allclose(q100.sum(0).numpy(), np.full(5, 12 / 5), rtol=1e-4)
    # Logits whose exp(x / 0.04) overflows float32 (e^125) still give the float64 answer.
    big = torch.rand(12, 5, generator=g) * 2 + 3
    assert not torch.isfinite(torch.exp(big / 0.04)).all()
    ref_big = _sinkhorn_reference(big.double().numpy(), 0.04, 3)
    np.testing.assert_allclose(sinkhorn_knopp(big, temp=0.04).numpy(), ref_big, rtol=1e-4, atol=1e-6)


def test_ibot_sinkhorn_uses_the_given_sample_count() -> None:
    logits = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    loss = iBOTPatchLoss(4)
    q = loss.sinkhorn_knopp_teacher(logits, 0.1, torch.tensor([7]))
    np.testing.assert_allclose(q.numpy(), _sinkhorn_reference(logits.double().numpy(), 0.1, 3), rtol=1e-5, atol=1e-7)


def test_softmax_centering_and_center_ema() -> None:
    loss = DINOLoss(3)
    t = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    p = loss.softmax_center_teacher(t, teacher_temp=0.5)
    assert torch.allclose(p, F.softmax(t / 0.5, dim=-1))  # the centre starts at zero
    loss.update_center(t)
    assert torch.allclose(loss.center, 0.1 * t.mean(0, keepdim=True))  # 0.9 * 0 + 0.1 * batch mean
    loss.update_center(t)
    assert torch.allclose(loss.center, (0.9 * 0.1 + 0.1) * t.mean(0, keepdim=True))
    p2 = loss.softmax_center_teacher(t, 0.5)
    assert torch.allclose(p2, F.softmax((t - loss.center) / 0.5, dim=-1))


def test_dino_loss_is_the_summed_cross_entropy() -> None:
    s1 = torch.tensor([[0.5, -0.5], [0.0, 1.0]])
    s2 = torch.tensor([[1.0, 0.0], [0.2, 0.1]])
    t = torch.tensor([[0.7, 0.3], [0.1, 0.9]])
    value = DINOLoss(2)([s1, s2], [t, t.flip(1)]).item()
    expected = 0.0
    for s in (s1, s2):
        for tt in (t, t.flip(1)):
            for row in range(2):
                logits = s[row].double().numpy() / 0.1
                log_p = logits - math.log(np.exp(logits).sum())
                expected -= float((tt[row].double().numpy() * log_p).sum()) / 2
    assert value == pytest.approx(expected, rel=1e-5)


def test_ibot_loss_weights_every_image_equally() -> None:
    masks = torch.tensor([[True, True, False], [False, False, False], [False, True, False]])
    g = torch.Generator().manual_seed(2)
    s = torch.randn(3, 4, generator=g)  # the 3 masked patches, in mask order
    t = F.softmax(torch.randn(3, 4, generator=g), dim=-1)
    weights = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    value = iBOTPatchLoss(4).forward_masked(s, t, masks, weights).item()
    ce = [-(t[i] * F.log_softmax(s[i] / 0.1, dim=-1)).sum().item() for i in range(3)]
    # image 0: mean of its 2 patches; image 1: nothing masked (0); image 2: its one patch; / 3 images
    assert value == pytest.approx(((ce[0] + ce[1]) / 2 + ce[2]) / 3, rel=1e-5)


def test_ibot_center_is_the_mean_masked_patch() -> None:
    loss = iBOTPatchLoss(2)
    t = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]])
    loss.update_center(t)
    assert torch.allclose(loss.center, 0.1 * torch.tensor([[[1.0, 1.0]]]))


def test_koleo_on_known_points() -> None:
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    # Every point's nearest neighbour is at distance sqrt(2); scale does not matter (normalised).
    assert KoLeoLoss()(square * 3).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-5)
    pts = torch.tensor([[1.0, 0.0], [math.cos(0.1), math.sin(0.1)], [-1.0, 0.0]])
    d01 = 2 * math.sin(0.05)  # chord of a 0.1 rad arc
    d2 = 2 * math.sin((math.pi - 0.1) / 2)  # point 2's nearest is point 1
    expected = -(math.log(d01) * 2 + math.log(d2)) / 3
    assert KoLeoLoss()(pts).item() == pytest.approx(expected, rel=1e-4)


def test_dino_head_outputs_cosines_to_unit_prototypes() -> None:
    torch.manual_seed(0)
    head = DINOHead(16, 10, nlayers=3, hidden_dim=32, bottleneck_dim=8)
    x = torch.randn(5, 16)
    out = head(x)
    assert out.shape == (5, 10)
    # Weight-normalised prototypes with norm 1 and an L2-normalised bottleneck: |logit| <= 1.
    w = head.last_layer.weight
    assert torch.allclose(w.norm(dim=1), torch.ones(10), atol=1e-5)
    z = F.normalize(head.mlp(x), dim=-1)
    assert torch.allclose(out, z @ w.t(), atol=1e-5)
    assert out.abs().max() <= 1 + 1e-5
