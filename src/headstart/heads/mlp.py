"""The MLP head: the article's new head, ``Linear(D, hidden) -> ReLU -> Dropout ->
Linear(hidden, K)`` (see :class:`MLPHead`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import FILE, Head, buffers, check_xy, one_thread, standardiser
from ..io.bundle import expect_shapes

__all__ = ["MLPHead"]


class MLPHead(Head):
    """``Linear(D, hidden) -> ReLU -> Dropout -> Linear(hidden, K)`` on standardised features.

    Trained full-batch with AdamW and a class-weighted cross-entropy; ``val_fraction`` of
    each class is held out for early stopping (``patience`` epochs) and the best epoch's
    weights are kept. Fitted attributes: ``classes_``, ``mean_``, ``scale_``, ``w1_``
    ``(hidden, D)``, ``b1_``, ``w2_`` ``(K, hidden)``, ``b2_``, ``n_epochs_``.
    """

    kind = "mlp"
    help = "a small neural network on the features (many images per class)"

    def __init__(self, hidden: int = 256, dropout: float = 0.5, lr: float = 1e-3,
                 weight_decay: float = 1e-2, max_epochs: int = 300, patience: int = 30,
                 val_fraction: float = 0.15, class_weight: str | None = "balanced",
                 random_state: int = 0) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.class_weight = class_weight
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "MLPHead":
        with one_thread():
            return self._fit(X, y)

    def _fit(self, X: Any, y: Any) -> "MLPHead":
        import torch
        from torch import nn

        from ..io.dataset import stratified_split

        X, y = check_xy(X, y)
        self.classes_ = np.unique(y)
        k = len(self.classes_)
        self.mean_, self.scale_ = standardiser(X)
        Xs = (X - self.mean_) / self.scale_
        yi = np.searchsorted(self.classes_, y)
        tr, va = stratified_split(yi, self.val_fraction, self.random_state)
        if len(va) == 0:
            tr = va = np.arange(len(yi))
        counts = np.bincount(yi[tr], minlength=k).astype(np.float32)
        weight = (len(tr) / (k * np.maximum(counts, 1))) if self.class_weight == "balanced" \
            else np.ones(k, np.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            net = nn.Sequential(nn.Linear(X.shape[1], self.hidden), nn.ReLU(),
                                nn.Dropout(self.dropout), nn.Linear(self.hidden, k))
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr,
                                    weight_decay=self.weight_decay)
            loss_fn = nn.CrossEntropyLoss(weight=torch.as_tensor(weight, dtype=torch.float32))
            xt, yt = torch.from_numpy(Xs[tr]), torch.from_numpy(yi[tr])
            xv, yv = torch.from_numpy(Xs[va]), torch.from_numpy(yi[va])
            best = (-1.0, float("inf"))
            best_state, best_epoch, since = None, 0, 0
            for epoch in range(self.max_epochs):
                net.train()
                opt.zero_grad()
                loss_fn(net(xt), yt).backward()
                opt.step()
                net.eval()
                with torch.no_grad():
                    out = net(xv)
                    acc = float((out.argmax(1) == yv).float().mean())
                    vloss = float(nn.functional.cross_entropy(out, yv))
                if (acc, -vloss) > (best[0], -best[1]):
                    best, best_epoch, since = (acc, vloss), epoch + 1, 0
                    best_state = {n: p.detach().clone() for n, p in net.state_dict().items()}
                else:
                    since += 1
                    if since >= self.patience:
                        break
            net.load_state_dict(best_state)
        self.w1_ = net[0].weight.detach().numpy().copy()
        self.b1_ = net[0].bias.detach().numpy().copy()
        self.w2_ = net[3].weight.detach().numpy().copy()
        self.b2_ = net[3].bias.detach().numpy().copy()
        self.n_epochs_ = best_epoch
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``(N, K)``."""
        h = np.maximum(self._scaled(X) @ self.w1_.T + self.b1_, 0.0)
        return h @ self.w2_.T + self.b2_

    def state(self) -> dict[str, np.ndarray]:
        """The fitted parameters as named arrays (see :meth:`from_state`)."""
        return {"mean": self.mean_, "scale": self.scale_, "w1": self.w1_, "b1": self.b1_,
                "w2": self.w2_, "b2": self.b2_, "classes": self.classes_.astype(np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], n_classes: int, n_features: int
                   ) -> "MLPHead":
        """A fitted head from :meth:`state` arrays, checked to map ``n_features`` to
        ``n_classes`` (any hidden width).

        Raises:
            ModelError: other keys or shapes.
        """
        k, d = n_classes, n_features
        h = state["w1"].shape[0] if "w1" in state and state["w1"].ndim == 2 else -1
        expect_shapes(FILE, state, {"mean": (d,), "scale": (d,), "w1": (h, d), "b1": (h,),
                                     "w2": (k, h), "b2": (k,), "classes": (k,)})
        head = cls(hidden=int(h))
        head.w1_, head.b1_, head.w2_, head.b2_ = (state[n] for n in ("w1", "b1", "w2", "b2"))
        head._set_common(state)
        return head

    def to_torch(self) -> Any:
        """The head as a ``torch.nn.Module``: features ``(N, D)`` -> logits ``(N, K)``."""
        import torch

        class MLP(torch.nn.Module):
            def __init__(self, head: MLPHead) -> None:
                super().__init__()
                buffers(self, {"mean": head.mean_, "scale": head.scale_, "w1": head.w1_,
                                "b1": head.b1_, "w2": head.w2_, "b2": head.b2_})

            def forward(self, f: torch.Tensor) -> torch.Tensor:
                h = torch.relu(((f - self.mean) / self.scale) @ self.w1.T + self.b1)
                return h @ self.w2.T + self.b2

        return MLP(self).eval()
