"""MSN objective: prototype predictions, sharpening, Sinkhorn, cross-entropy and ME-MAX.

Reference: Assran et al., "Masked Siamese Networks for Label-Efficient Learning" (arXiv 2204.07141),
Section 3. Notation used below (paper symbols in brackets):

* ``z`` (N, d) -- embeddings [z_{i,m} for anchors, z^+_i for targets] output by the projection head.
* ``prototypes`` (K, d) -- learnable prototypes [q, a K x d matrix].
* ``p = softmax(cos(z, q) / tau)`` (N, K) -- prediction of a view over the K prototypes
  (Sec. 3, "Similarity metric and predictions"), with temperature ``tau`` = 0.1.
* ``rho(p)_k = p_k^{1/T} / sum_j p_j^{1/T}`` -- sharpening of the target prediction with T = 0.25.
* Objective (Sec. 3, "Training objective"):
  ``1/(M B) sum_{i,m} H(rho(p^+_i), p_{i,m}) - lambda H(p_bar)`` with ``p_bar`` the mean anchor
  prediction over the whole (global) batch and ``lambda`` the ME-MAX weight. We report the
  regulariser as ``log K - H(p_bar)`` (>= 0, 0 iff ``p_bar`` is uniform) which differs from
  ``-H(p_bar)`` only by a constant.

All log-probabilities are computed with ``log_softmax`` (never ``log(p ** -t)``), so the loss is
finite even when some probabilities underflow.

Distributed semantics
---------------------
``p_bar`` is averaged over all workers with :func:`global_mean`, whose backward is the identity
(the incoming gradient is passed unchanged to the local mean; it is *not* divided by the world
size).  Each worker therefore back-propagates ``dR/dp_bar_global * dp_bar_local/dtheta``; once the
per-worker gradients are **averaged** (what ``DistributedDataParallel`` does), the result is exactly
the gradient of the full-batch loss, for the ME-MAX term as well as for the per-worker mean
cross-entropy/entropy terms (equal per-worker batch sizes assumed).  The loss *values* ``ce`` and
``entropy`` are per-worker means; ``me_max`` is global.  Note that the original training script does
not put the prototypes inside DDP and instead *sums* their gradient over workers, i.e. it uses
``world_size`` times the full-batch gradient for the prototypes (AdamW is nearly invariant to this).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vitmsn.config import check_int

__all__ = [
    "AllReduceMean",
    "MSNLoss",
    "MSNLossOutput",
    "default_all_reduce_mean",
    "global_mean",
    "me_max_regularizer",
    "mean_entropy",
    "msn_loss",
    "msn_loss_from_targets",
    "msn_targets",
    "prototype_logits",
    "sharpen",
    "sharpen_logits",
    "sinkhorn",
    "smoothed_log_probs",
]

AllReduceMean = Callable[[Tensor], Tensor]
"""A forward-only reduction returning the element-wise mean of a tensor over all workers.

It receives a detached tensor and must return a tensor of the same shape (it may modify its input in
place). The identity is the correct reduction for a single process."""


def _dist_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def default_all_reduce_mean(x: Tensor) -> Tensor:
    """Mean over ``torch.distributed`` workers when a process group with > 1 worker is initialised,
    otherwise the identity. Forward only (no autograd)."""
    world_size = _dist_world_size()
    if world_size == 1:
        return x
    y = x.detach().contiguous().clone()
    y.div_(world_size)
    dist.all_reduce(y)  # sum of x / world_size over workers
    return y


def _resolve(all_reduce_mean: AllReduceMean | None) -> AllReduceMean:
    return default_all_reduce_mean if all_reduce_mean is None else all_reduce_mean


class _GlobalMeanIdentityBackward(torch.autograd.Function):
    """Forward: mean over workers. Backward: identity (gradient passed through unchanged)."""

    @staticmethod
    def forward(ctx, x: Tensor, reduce_fn: AllReduceMean) -> Tensor:  # type: ignore[override]
        return reduce_fn(x.detach().clone())

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad_output, None


def global_mean(x: Tensor, all_reduce_mean: AllReduceMean | None = None) -> Tensor:
    """Average ``x`` over workers with an identity backward (see module docstring).

    Args:
        x: any tensor, identical shape on every worker.
        all_reduce_mean: forward reduction; ``None`` uses :func:`default_all_reduce_mean`.
    """
    return _GlobalMeanIdentityBackward.apply(x, _resolve(all_reduce_mean))


# --------------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------------


def prototype_logits(z: Tensor, prototypes: Tensor, temperature: float = 0.1) -> Tensor:
    """Cosine similarities between embeddings and prototypes divided by the temperature.

    Args:
        z: (N, d) embeddings.
        prototypes: (K, d) prototypes.
        temperature: tau > 0 (0.1 in MSN).

    Returns:
        (N, K) logits ``<z_n/|z_n|, q_k/|q_k|> / tau``; ``softmax`` over dim 1 gives the MSN prediction.
    """
    if z.ndim != 2 or prototypes.ndim != 2 or z.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"expected z (N, d) and prototypes (K, d), got {tuple(z.shape)} and {tuple(prototypes.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z_n = F.normalize(z, dim=1)  # (N, d)
    q_n = F.normalize(prototypes, dim=1)  # (K, d)
    return z_n @ q_n.T / temperature  # (N, K)


def smoothed_log_probs(logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Log of the (optionally label-smoothed) prediction ``(1 - s) softmax(logits) + s / K``.

    The original code builds predictions as ``softmax(logits) @ L`` with prototype labels
    ``L = (1 - s) I + (s / K) 1 1^T`` (one-hot rows smoothed with off-value ``s/K`` and on-value
    ``1 - s + s/K``). Since every prediction row sums to one, ``softmax(logits) @ L`` equals
    ``(1 - s) p + s / K``; this is computed here in log space with ``logaddexp``.

    Args:
        logits: (N, K).
        label_smoothing: s in [0, 1).

    Returns:
        (N, K) log-probabilities (rows log-sum-exp to 0).
    """
    log_p = F.log_softmax(logits, dim=1)  # (N, K)
    if label_smoothing == 0.0:
        return log_p
    num_classes = logits.shape[1]
    floor = torch.full_like(log_p, math.log(label_smoothing / num_classes))
    return torch.logaddexp(log_p + math.log1p(-label_smoothing), floor)


def sharpen(probs: Tensor, T: float) -> Tensor:
    """Sharpen probabilities: ``rho(p)_k = p_k^{1/T} / sum_j p_j^{1/T}`` (row-wise, dim 1).

    Computed in log space (``softmax(log p / T)``) so it cannot overflow or divide by zero for
    small T. ``probs`` is (N, K) with rows summing to one; returns (N, K).
    """
    return torch.softmax(torch.log(probs) / T, dim=1)


def sharpen_logits(logits: Tensor, T: float) -> Tensor:
    """Sharpened prediction from logits or log-probabilities: ``softmax(logits / T)``.

    Equals ``sharpen(softmax(logits), T)`` because ``log softmax(l) = l - logsumexp(l)`` and the
    row constant cancels. ``logits`` is (N, K); returns (N, K).
    """
    return torch.softmax(logits / T, dim=1)


@torch.no_grad()
def sinkhorn(probs: Tensor, num_iters: int = 3, *, all_reduce_mean: AllReduceMean | None = None) -> Tensor:
    """Sinkhorn-Knopp balancing of soft assignments over the GLOBAL batch (no gradient).

    Re-implements the semantics of the original ``distributed_sinkhorn``: view the assignments as a
    (K, B_global) matrix, scale it to total mass one, then repeat ``num_iters`` times: (i) rescale
    each prototype row so that its sum over the global batch is ``1/K`` (row sums are all-reduced),
    (ii) rescale each sample column so that it sums to ``1/B_global`` (purely local); finally
    multiply by ``B_global`` so that each sample's assignment sums to one.

    Returned convention, shape (B_local, K): every row (sample) sums to 1; after the last iteration the
    column (prototype) sums over the global batch are approximately ``B_global / K`` (exactly so right
    after a row step). With ``num_iters=0`` the input is only rescaled by ``B_global / total mass``
    (a no-op for row-stochastic input).

    Only means over workers are needed: every global scale factor cancels, and ``B_global / world_size``
    is obtained by averaging the local batch sizes (computed in the same collective as the total mass),
    so no explicit world size is required.

    Args:
        probs: (B_local, K) non-negative assignments (e.g. sharpened target predictions).
        num_iters: number of Sinkhorn iterations (3 in MSN), >= 0.
        all_reduce_mean: forward mean over workers; ``None`` uses ``torch.distributed`` if initialised.

    Returns:
        (B_local, K) balanced assignments, same dtype as ``probs``.
    """
    if num_iters < 0:
        raise ValueError(f"num_iters must be >= 0, got {num_iters}")
    reduce = _resolve(all_reduce_mean)
    q = probs.detach().T.clone()  # (K, B_local)
    num_protos, local_batch = q.shape
    # [mean total mass, mean batch size] over workers
    stats = reduce(torch.stack([q.sum(), q.new_full((), float(local_batch))]))  # (2,)
    mean_batch = stats[1]  # B_global / W
    q.mul_(mean_batch / stats[0])  # global total mass == B_global (each sample ~ 1)
    for _ in range(num_iters):
        row_mean = reduce(q.sum(dim=1, keepdim=True))  # (K, 1): global row sums / W
        q.mul_(mean_batch / (num_protos * row_mean))  # global row sums == B_global / K
        q.div_(q.sum(dim=0, keepdim=True))  # each sample column sums to 1
    return q.T  # (B_local, K)


# --------------------------------------------------------------------------------------------------
# Loss terms
# --------------------------------------------------------------------------------------------------


def mean_entropy(log_probs: Tensor) -> Tensor:
    """Mean over rows of the entropy ``H(p_n) = -sum_k p_nk log p_nk``. ``log_probs`` is (N, K)."""
    return -(log_probs.exp() * log_probs).sum(dim=1).mean()


def me_max_regularizer(mean_probs: Tensor) -> Tensor:
    """Mean-entropy-maximisation term ``log K - H(p_bar)`` for a (K,) distribution ``p_bar`` (>= 0)."""
    entropy = -torch.special.xlogy(mean_probs, mean_probs).sum()
    return math.log(mean_probs.shape[-1]) - entropy


class MSNLossOutput(NamedTuple):
    """Result of :func:`msn_loss`. All tensors are 0-dim unless stated."""

    loss: Tensor
    """``ce + me_max_weight * me_max + entropy_weight * entropy`` (differentiable)."""
    ce: Tensor
    """Cross-entropy ``H(targets, p)`` averaged over the local anchors."""
    me_max: Tensor
    """``log K - H(p_bar)`` with ``p_bar`` the global mean anchor prediction (unweighted)."""
    entropy: Tensor
    """Mean entropy of the anchor predictions (unweighted)."""
    targets: Tensor
    """(B, K) detached targets (sharpened, optionally Sinkhorn-balanced), one row per target view."""
    num_unique_targets: Tensor
    """Number of distinct target argmaxes in the local batch (collapse monitor; float, on the device)."""
    max_target: Tensor
    """Mean over targets of their largest probability (detached)."""
    min_target: Tensor
    """Mean over targets of their smallest probability (detached)."""


def _check_hparams(
    *,
    temperature: float,
    sharpen_T: float,
    me_max_weight: float,
    entropy_weight: float,
    sinkhorn_iters: int,
    label_smoothing: float,
) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < sharpen_T <= 1:
        raise ValueError(f"sharpen_T must satisfy 0 < T <= 1, got {sharpen_T}")
    if not me_max_weight >= 0:
        raise ValueError(f"me_max_weight must be >= 0, got {me_max_weight}")
    if not entropy_weight >= 0:
        raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight}")
    if isinstance(sinkhorn_iters, bool) or not isinstance(sinkhorn_iters, int) or sinkhorn_iters < 0:
        raise ValueError(f"sinkhorn_iters must be an int >= 0, got {sinkhorn_iters!r}")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


def msn_targets(
    target_z: Tensor,
    prototypes: Tensor,
    *,
    temperature: float = 0.1,
    sharpen_T: float = 0.25,
    use_sinkhorn: bool = False,
    sinkhorn_iters: int = 3,
    label_smoothing: float = 0.0,
    all_reduce_mean: AllReduceMean | None = None,
) -> Tensor:
    """MSN targets ``rho(p^+)`` (paper Sec. 3), computed under ``no_grad``.

    Prediction of the target view (label-smoothed as in :func:`smoothed_log_probs`), sharpened with
    temperature ``sharpen_T`` and optionally balanced with :func:`sinkhorn` over the global batch
    (sharpening happens before Sinkhorn, as in the original).

    Args:
        target_z: (B, d) target embeddings.
        prototypes: (K, d) prototypes.

    Returns:
        (B, K) detached targets, rows summing to one.
    """
    with torch.no_grad():
        logits = prototype_logits(target_z.detach(), prototypes.detach(), temperature)  # (B, K)
        targets = sharpen_logits(smoothed_log_probs(logits, label_smoothing), sharpen_T)  # (B, K)
        if use_sinkhorn:
            targets = sinkhorn(targets, sinkhorn_iters, all_reduce_mean=all_reduce_mean)
    return targets


def msn_loss_from_targets(
    anchor_z: Tensor,
    prototypes: Tensor,
    targets: Tensor,
    *,
    num_anchor_views: int,
    temperature: float = 0.1,
    me_max_weight: float = 1.0,
    entropy_weight: float = 0.0,
    label_smoothing: float = 0.0,
    all_reduce_mean: AllReduceMean | None = None,
) -> MSNLossOutput:
    """MSN loss terms given fixed targets; see :func:`msn_loss` for the arguments.

    ``targets`` is (B, K) and treated as a constant. Useful to differentiate the loss with respect
    to the prototypes while holding the targets fixed (which is what :func:`msn_loss` does).
    """
    _check_hparams(
        temperature=temperature,
        sharpen_T=1.0,  # unused here
        me_max_weight=me_max_weight,
        entropy_weight=entropy_weight,
        sinkhorn_iters=0,  # unused here
        label_smoothing=label_smoothing,
    )
    num_anchor_views = check_int(num_anchor_views, "num_anchor_views", 1)
    if anchor_z.ndim != 2 or targets.ndim != 2:
        raise ValueError(
            f"anchor_z and targets must be 2-D, got {tuple(anchor_z.shape)}, {tuple(targets.shape)}"
        )
    batch, num_protos = targets.shape
    if batch == 0:
        raise ValueError("an empty batch (0 target rows) has no loss")
    if num_protos != prototypes.shape[0]:
        raise ValueError(f"targets have {num_protos} columns but there are {prototypes.shape[0]} prototypes")
    if anchor_z.shape[0] != num_anchor_views * batch:
        raise ValueError(
            f"anchor_z has {anchor_z.shape[0]} rows but num_anchor_views * batch = "
            f"{num_anchor_views} * {batch} = {num_anchor_views * batch}"
        )
    targets = targets.detach()

    # Anchor predictions p (V*B, K), in log space.
    anchor_log_p = smoothed_log_probs(prototype_logits(anchor_z, prototypes, temperature), label_smoothing)

    # Cross-entropy H(targets, p) averaged over the V*B anchors; anchor row v*B + b <-> target row b.
    per_view = anchor_log_p.view(num_anchor_views, batch, num_protos)  # (V, B, K)
    ce = -(targets.unsqueeze(0) * per_view).sum(dim=-1).mean()

    # ME-MAX on the global mean prediction p_bar (K,).
    p_bar = global_mean(anchor_log_p.exp().mean(dim=0), all_reduce_mean)  # (K,)
    me_max = me_max_regularizer(p_bar)

    # Mean entropy of the anchor predictions.
    entropy = mean_entropy(anchor_log_p)

    loss = ce + me_max_weight * me_max + entropy_weight * entropy

    with torch.no_grad():
        # prototypes that are some target's argmax, counted on the device (torch.unique would wait for it)
        num_unique = targets.new_zeros(num_protos).index_fill_(0, targets.argmax(dim=1), 1.0).sum()
        max_t = targets.max(dim=1).values.mean()
        min_t = targets.min(dim=1).values.mean()

    return MSNLossOutput(
        loss=loss,
        ce=ce,
        me_max=me_max,
        entropy=entropy,
        targets=targets,
        num_unique_targets=num_unique,
        max_target=max_t,
        min_target=min_t,
    )


def msn_loss(
    anchor_z: Tensor,
    target_z: Tensor,
    prototypes: Tensor,
    *,
    num_anchor_views: int,
    temperature: float = 0.1,
    sharpen_T: float = 0.25,
    me_max_weight: float = 1.0,
    entropy_weight: float = 0.0,
    use_sinkhorn: bool = False,
    sinkhorn_iters: int = 3,
    label_smoothing: float = 0.0,
    all_reduce_mean: AllReduceMean | None = None,
) -> MSNLossOutput:
    """MSN loss (paper Sec. 3): cross-entropy to sharpened targets + ME-MAX (+ optional entropy).

    Args:
        anchor_z: (V * B, d) anchor embeddings in view-major order: row ``v * B + b`` is view ``v``
            of image ``b`` and is paired with target row ``b``.
        target_z: (B, d) target embeddings (from the EMA target encoder). Targets are computed from
            them under ``no_grad`` (:func:`msn_targets`); neither ``target_z`` nor the prototypes
            receive gradient through the targets.
        prototypes: (K, d) prototypes.
        num_anchor_views: V (e.g. 1 masked random view + 10 focal views = 11).
        temperature: cosine-similarity temperature tau (0.1).
        sharpen_T: target sharpening temperature T, 0 < T <= 1 (0.25).
        me_max_weight: weight lambda of ``log K - H(p_bar)``.
        entropy_weight: weight of the mean anchor-prediction entropy (0 disables it in the total).
        use_sinkhorn: balance the sharpened targets with :func:`sinkhorn` over the global batch.
        sinkhorn_iters: Sinkhorn iterations (3).
        label_smoothing: s; anchor and target predictions become ``(1 - s) p + s / K`` (targets are
            smoothed before sharpening), reproducing the original smoothed one-hot prototype labels.
        all_reduce_mean: forward mean over workers for ``p_bar`` and Sinkhorn; ``None`` uses
            ``torch.distributed`` when initialised with more than one worker.

    Returns:
        :class:`MSNLossOutput` (``loss``, ``ce``, ``me_max``, ``entropy``, ``targets`` and stats).
    """
    _check_hparams(
        temperature=temperature,
        sharpen_T=sharpen_T,
        me_max_weight=me_max_weight,
        entropy_weight=entropy_weight,
        sinkhorn_iters=sinkhorn_iters,
        label_smoothing=label_smoothing,
    )
    if target_z.ndim != 2:
        raise ValueError(f"target_z must be (B, d), got {tuple(target_z.shape)}")
    if anchor_z.ndim != 2 or anchor_z.shape[0] != num_anchor_views * target_z.shape[0]:
        raise ValueError(
            f"anchor_z {tuple(anchor_z.shape)} must be (num_anchor_views * B, d) = "
            f"({num_anchor_views} * {target_z.shape[0]}, d)"
        )
    targets = msn_targets(
        target_z,
        prototypes,
        temperature=temperature,
        sharpen_T=sharpen_T,
        use_sinkhorn=use_sinkhorn,
        sinkhorn_iters=sinkhorn_iters,
        label_smoothing=label_smoothing,
        all_reduce_mean=all_reduce_mean,
    )
    return msn_loss_from_targets(
        anchor_z,
        prototypes,
        targets,
        num_anchor_views=num_anchor_views,
        temperature=temperature,
        me_max_weight=me_max_weight,
        entropy_weight=entropy_weight,
        label_smoothing=label_smoothing,
        all_reduce_mean=all_reduce_mean,
    )


class MSNLoss(nn.Module):
    """Module wrapper around :func:`msn_loss` holding (and validating) the hyper-parameters.

    ``forward(anchor_z (V*B, d), target_z (B, d), prototypes (K, d), *, sharpen_T=None)``; pass
    ``sharpen_T`` to override the stored value for a scheduled sharpening temperature.
    """

    def __init__(
        self,
        num_anchor_views: int,
        *,
        temperature: float = 0.1,
        sharpen_T: float = 0.25,
        me_max_weight: float = 1.0,
        entropy_weight: float = 0.0,
        use_sinkhorn: bool = False,
        sinkhorn_iters: int = 3,
        label_smoothing: float = 0.0,
        all_reduce_mean: AllReduceMean | None = None,
    ) -> None:
        super().__init__()
        num_anchor_views = check_int(num_anchor_views, "num_anchor_views", 1)
        _check_hparams(
            temperature=temperature,
            sharpen_T=sharpen_T,
            me_max_weight=me_max_weight,
            entropy_weight=entropy_weight,
            sinkhorn_iters=sinkhorn_iters,
            label_smoothing=label_smoothing,
        )
        self.num_anchor_views = num_anchor_views
        self.temperature = float(temperature)
        self.sharpen_T = float(sharpen_T)
        self.me_max_weight = float(me_max_weight)
        self.entropy_weight = float(entropy_weight)
        self.use_sinkhorn = bool(use_sinkhorn)
        self.sinkhorn_iters = sinkhorn_iters
        self.label_smoothing = float(label_smoothing)
        self.all_reduce_mean = all_reduce_mean

    def forward(
        self, anchor_z: Tensor, target_z: Tensor, prototypes: Tensor, *, sharpen_T: float | None = None
    ) -> MSNLossOutput:
        return msn_loss(
            anchor_z,
            target_z,
            prototypes,
            num_anchor_views=self.num_anchor_views,
            temperature=self.temperature,
            sharpen_T=self.sharpen_T if sharpen_T is None else sharpen_T,
            me_max_weight=self.me_max_weight,
            entropy_weight=self.entropy_weight,
            use_sinkhorn=self.use_sinkhorn,
            sinkhorn_iters=self.sinkhorn_iters,
            label_smoothing=self.label_smoothing,
            all_reduce_mean=self.all_reduce_mean,
        )

    def extra_repr(self) -> str:
        return (
            f"num_anchor_views={self.num_anchor_views}, temperature={self.temperature}, "
            f"sharpen_T={self.sharpen_T}, me_max_weight={self.me_max_weight}, "
            f"entropy_weight={self.entropy_weight}, use_sinkhorn={self.use_sinkhorn}, "
            f"sinkhorn_iters={self.sinkhorn_iters}, label_smoothing={self.label_smoothing}"
        )
