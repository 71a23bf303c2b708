"""Torch training of the residual MLP adapter (imported only when an MLP is fitted)."""

from __future__ import annotations

import numpy as np
import torch

from silobridge.adapters.base import (
    FitConfig,
    Float64Matrix,
    FloatMatrix,
    twin_ndcg,
    unit_rows,
)
from silobridge.adapters.linear import RidgeSolver


class ResidualMlp(torch.nn.Module):
    """``A x + b + W2 gelu(W1 x + c)`` starting at the affine map ``(A, b)`` with ``W2 = 0``."""

    def __init__(self, weight: FloatMatrix, bias: FloatMatrix, hidden: int) -> None:
        super().__init__()
        self.affine = torch.nn.Linear(weight.shape[1], weight.shape[0])
        self.hidden = torch.nn.Linear(weight.shape[1], hidden)
        self.out = torch.nn.Linear(hidden, weight.shape[0], bias=False)
        with torch.no_grad():
            self.affine.weight.copy_(torch.from_numpy(weight))
            self.affine.bias.copy_(torch.from_numpy(bias))
            self.out.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.nn.functional.gelu(self.hidden(x), approximate="tanh")
        out: torch.Tensor = self.affine(x) + self.out(hidden)
        return out

    def weights(self) -> dict[str, FloatMatrix]:
        """The learned weights under the names ``MlpAdapter`` stores them by."""
        tensors = {
            "weight": self.affine.weight,
            "bias": self.affine.bias,
            "hidden_weight": self.hidden.weight,
            "hidden_bias": self.hidden.bias,
            "out_weight": self.out.weight,
        }
        return {name: t.detach().numpy().astype(np.float32) for name, t in tensors.items()}


def _loss(pred: torch.Tensor, target: torch.Tensor, config: FitConfig) -> torch.Tensor:
    pred = torch.nn.functional.normalize(pred, dim=1)
    loss = 1.0 - (pred * target).sum(dim=1).mean()
    if config.mlp_loss == "cosine+infonce":
        # In-batch contrastive term: each prediction should be nearer its own target than the
        # batch's other targets, which is what retrieval rewards.
        logits = pred @ target.T / config.mlp_infonce_temperature
        labels = torch.arange(pred.shape[0])
        contrastive = torch.nn.functional.cross_entropy(logits, labels)
        loss = loss + config.mlp_infonce_weight * contrastive
    return loss


def train_residual_mlp(
    source: Float64Matrix,
    target: Float64Matrix,
    ridge_lambda: float,
    config: FitConfig,
    epochs: int,
    tune: tuple[Float64Matrix, Float64Matrix] | None,
) -> tuple[dict[str, FloatMatrix], int]:
    """Weights and epochs trained: ``epochs`` of them, or fewer by early stopping on ``tune``.

    Early stopping keeps the epoch with the best nDCG@10 on ``tune`` (the metric the adapter is
    judged by, with the training targets as distractors) and stops after ``mlp_patience``
    epochs without improvement.
    """
    weight, bias = RidgeSolver(source, target).solve(ridge_lambda)
    torch.manual_seed(config.seed)
    model = ResidualMlp(weight.astype(np.float32), bias.astype(np.float32), config.mlp_hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.mlp_lr)
    x = torch.from_numpy(source.astype(np.float32))
    y = torch.from_numpy(target.astype(np.float32))
    order = torch.Generator().manual_seed(config.seed)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(1, max(epochs, 1) + 1):
        model.train()
        for batch in torch.split(torch.randperm(x.shape[0], generator=order), config.mlp_batch):
            optimiser.zero_grad()
            loss = _loss(model(x[batch]), y[batch], config)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
        if tune is None:
            continue
        model.eval()
        with torch.no_grad():
            predicted = model(torch.from_numpy(tune[0].astype(np.float32))).numpy()
        score = twin_ndcg(unit_rows(predicted), tune[1], distractors=target)
        if best is None or score > best[0]:
            best = (score, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        elif epoch - best[1] >= config.mlp_patience:
            break
    if best is None:
        return model.weights(), max(epochs, 1)
    model.load_state_dict(best[2])
    return model.weights(), best[1]
