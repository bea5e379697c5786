"""The DINOv2 losses: DINO (class tokens), iBOT (masked patch tokens), KoLeo (spread of features).

Follows ``dinov2/loss/*.py``. The teacher's targets are centred either by an EMA of its
mean output ("centering", with softmax) or by Sinkhorn-Knopp ("sinkhorn_knopp"); both
reduce across ranks when torch.distributed is initialised, so every rank uses the same
statistics. The official code defers the centre update to the next step (to overlap an
asynchronous all-reduce); here it is applied right away, which is the same arithmetic.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(t: Tensor, op=None) -> Tensor:
    if _distributed():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temp: float, n_samples: int | Tensor | None = None, n_iterations: int = 3) -> Tensor:
    """Soft assignments [B, K] whose columns (prototypes) have equal mass and rows sum to 1.

    ``n_samples``: the number of rows over all ranks (default: rows here x world size).
    """
    logits = logits.float()
    world = dist.get_world_size() if _distributed() else 1
    # Subtracting the global maximum changes nothing after normalisation but avoids exp overflow.
    shift = _all_reduce(logits.max().detach().clone().reshape(1), dist.ReduceOp.MAX if _distributed() else None)
    q = torch.exp((logits - shift) / temp).t()  # K x B, the paper's notation
    b = logits.shape[0] * world if n_samples is None else n_samples
    k = q.shape[0]
    q /= _all_reduce(q.sum())
    for _ in range(n_iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))  # each prototype gets total mass 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # each sample gets total mass 1/B
        q /= b
    q *= b  # columns sum to 1: an assignment per sample
    return q.t()


class DINOLoss(nn.Module):
    """Cross-entropy between the teacher's centred, sharpened targets and the student's softmax."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: Tensor, teacher_temp: float) -> Tensor:
        return F.softmax((teacher_output.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output: Tensor, teacher_temp: float, n_iterations: int = 3) -> Tensor:
        return sinkhorn_knopp(teacher_output, teacher_temp, n_iterations=n_iterations)

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        world = dist.get_world_size() if _distributed() else 1
        batch_center = _all_reduce(teacher_output.float().sum(dim=0, keepdim=True)) / (len(teacher_output) * world)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def forward(self, student_output_list: list[Tensor], teacher_out_softmaxed_centered_list: list[Tensor]) -> Tensor:
        """Sum over (student crop, teacher crop) pairs of the batch-mean cross-entropy."""
        total = 0.0
        for s in student_output_list:
            lsm = F.log_softmax(s.float() / self.student_temp, dim=-1)
            for t in teacher_out_softmaxed_centered_list:
                total = total - torch.sum(t * lsm, dim=-1).mean()
        return total


class iBOTPatchLoss(nn.Module):  # noqa: N801 (the method's name)
    """Cross-entropy on the masked patches, each image weighted equally."""

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, patch_out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_tokens: Tensor, teacher_temp: float) -> Tensor:
        """``teacher_patch_tokens``: [M, K] masked-patch logits -> [M, K] targets."""
        return F.softmax((teacher_patch_tokens.float().unsqueeze(0) - self.center) / teacher_temp, dim=-1).squeeze(0)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output: Tensor, teacher_temp: float, n_masked_patches_tensor: Tensor,
                               n_iterations: int = 3) -> Tensor:
        n = _all_reduce(n_masked_patches_tensor.clone())  # masked patches over all ranks
        return sinkhorn_knopp(teacher_output, teacher_temp, n_samples=n, n_iterations=n_iterations)

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: Tensor) -> None:
        """The official update: the mean over this rank's masked patches, averaged over ranks."""
        world = dist.get_world_size() if _distributed() else 1
        batch_center = _all_reduce(teacher_patch_tokens.float().mean(0, keepdim=True).unsqueeze(0)) / world
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    def forward_masked(self, student_patch_tokens_masked: Tensor, teacher_patch_tokens_masked: Tensor,
                       student_masks_flat: Tensor, masks_weight: Tensor) -> Tensor:
        """Student/teacher [M, K] over the M masked patches of ``student_masks_flat`` [B, N]."""
        lsm = F.log_softmax(student_patch_tokens_masked.float() / self.student_temp, dim=-1)
        loss = torch.sum(teacher_patch_tokens_masked * lsm, dim=-1) * masks_weight
        return -loss.sum() / student_masks_flat.shape[0]


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy estimate: -mean log distance to the nearest other sample."""

    def forward(self, student_output: Tensor, eps: float = 1e-8) -> Tensor:
        with torch.autocast(student_output.device.type, enabled=False):
            x = F.normalize(student_output.float(), eps=eps, p=2, dim=-1)
            dots = x @ x.t()
            dots.view(-1)[:: x.shape[0] + 1].fill_(-1)  # a sample is not its own neighbour
            nn_index = dots.argmax(dim=1)
            distances = F.pairwise_distance(x, x[nn_index], p=2, eps=eps)
            return -torch.log(distances + eps).mean()
