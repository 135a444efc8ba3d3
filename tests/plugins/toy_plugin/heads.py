"""``prototype``: each class is the mean of its (unit) feature rows; logits are scaled
cosine similarities to the class means."""

from __future__ import annotations

from typing import Any

import numpy as np

from headstart.heads.base import Head, check_xy
from headstart.io.bundle import expect_shapes


class PrototypeHead(Head):
    kind = "prototype"
    help = "nearest class mean (a toy plugin head)"

    def __init__(self, scale: float = 10.0, random_state: int = 0) -> None:
        self.scale = scale
        self.random_state = random_state

    @staticmethod
    def _unit(X: Any) -> np.ndarray:
        X = np.asarray(X, np.float32)
        return X / (np.linalg.norm(X, axis=1, keepdims=True) + 1e-12)

    def fit(self, X: Any, y: Any) -> "PrototypeHead":
        X, y = check_xy(X, y)
        self.classes_ = np.unique(y)
        U = self._unit(X)
        self.prototypes_ = self._unit(np.stack([U[y == c].mean(0) for c in self.classes_]))
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        return self.scale * self._unit(X) @ self.prototypes_.T

    def state(self) -> dict[str, np.ndarray]:
        return {"prototypes": self.prototypes_, "scale": np.asarray([self.scale], np.float32),
                "classes": self.classes_.astype(np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], n_classes: int, n_features: int
                   ) -> "PrototypeHead":
        expect_shapes("head.safetensors", state, {"prototypes": (n_classes, n_features),
                                                  "scale": (1,), "classes": (n_classes,)})
        head = cls(scale=float(state["scale"][0]))
        head.prototypes_, head.classes_ = state["prototypes"], state["classes"]
        return head

    def to_torch(self) -> Any:
        import torch

        class Prototypes(torch.nn.Module):
            def __init__(self, head: PrototypeHead) -> None:
                super().__init__()
                self.scale = head.scale
                self.register_buffer("prototypes", torch.from_numpy(
                    np.asarray(head.prototypes_, np.float32).copy()))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                unit = x / (x.norm(dim=1, keepdim=True) + 1e-12)
                return self.scale * unit @ self.prototypes.T

        return Prototypes(self).eval()
