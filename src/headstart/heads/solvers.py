"""L2-regularised logistic regression in NumPy (private): the solver of the linear head.

Minimises ``sum_i w_i * loss_i / sum_i w_i + ||W||^2 / (2 C sum_i w_i)`` (the intercept is
not penalised; ``w_i`` are sample weights), the objective of scikit-learn's
``LogisticRegression(C=C)`` up to a constant factor: multinomial cross-entropy for K > 2
classes, the binary logistic loss with one weight vector for K = 2. L-BFGS with a
backtracking line search, warm-startable, in float64.

When there are fewer rows than features, the problem is solved exactly in the span of the
rows (the L2-optimal weights lie there: any part orthogonal to every row changes no logit
and only adds penalty), which makes a 1280-feature problem on 40 images a 40-dimensional
one. No scikit-learn or SciPy import: a whole ``headstart train`` stays short.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

__all__ = ["Logistic", "balanced_weights", "fit_logistic", "fold_coordinates", "project"]


@dataclass
class Logistic:
    """A fitted model on (possibly projected) features: logits ``Z @ W.T + b``; ``W``
    ``(K', r)`` with ``K' = 1`` for two classes (logit of class 1)."""

    W: np.ndarray
    b: np.ndarray
    iterations: int = 0


def project(X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(Z, V)``: ``X`` ``(N, D)`` in coordinates of its row space, ``Z = X @ V`` with
    ``V`` ``(D, r)`` orthonormal, when ``N < D``; else ``(X, None)``. Computed from the
    ``(N, N)`` Gram matrix (an eigendecomposition, several times faster than an SVD of
    ``X`` when N is well below D); directions whose singular value is under 1e-6 of the
    largest are dropped (they carry rounding noise, not data)."""
    n, d = X.shape
    if n >= d:
        return X, None
    X = np.asarray(X, np.float64)
    U, s = _row_space(X @ X.T)
    return U * s, (X.T @ U) / s


def _row_space(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(U, s)`` of a Gram matrix ``G = X @ X.T`` ``(N, N)``: its eigenvectors ``(N, r)``
    and the singular values ``(r,)`` of ``X``, those under 1e-6 of the largest dropped."""
    e, U = np.linalg.eigh(G)
    keep = e > max(float(e[-1]), 0.0) * 1e-12
    return U[:, keep], np.sqrt(e[keep])


def fold_coordinates(X: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each ``(train, test)`` row split of ``X`` ``(N, D)``: the training rows in
    coordinates of their row space and the test rows in the same coordinates, as
    :func:`project` gives them (``Z``, and the test rows times ``V``). When the training
    rows are fewer than the features, all come from one ``(N, N)`` Gram matrix, so the
    folds cost one pass over the ``D`` features in all rather than two or three each."""
    if max(len(tr) for tr, _ in folds) >= X.shape[1]:
        spaces = [project(X[tr]) for tr, _ in folds]
        return [(Z, X[te] @ V if V is not None else X[te])
                for (_, te), (Z, V) in zip(folds, spaces)]
    X = np.asarray(X, np.float64)
    G = X @ X.T
    out = []
    for tr, te in folds:
        U, s = _row_space(G[np.ix_(tr, tr)])
        out.append((U * s, (G[np.ix_(te, tr)] @ U) / s))
    return out


def _loss_grad(theta: np.ndarray, Z: np.ndarray, Y: np.ndarray, w: np.ndarray, k: int,
               lam: np.ndarray, bscale: float) -> tuple[float, np.ndarray]:
    """Objective and gradient; ``lam`` ``(r,)``: the penalty of each (rescaled) column."""
    n, r = Z.shape
    W, b = theta[: k * r].reshape(k, r), theta[k * r:] * bscale
    logits = Z @ W.T + b
    if k == 1:  # binary: y in {0, 1}, loss = softplus(z) - y z
        z = logits[:, 0]
        loss = np.logaddexp(0.0, z) - Y[:, 1] * z
        dz = (1.0 / (1.0 + np.exp(-z)) - Y[:, 1])[:, None]
    else:
        m = logits.max(axis=1, keepdims=True)
        e = np.exp(logits - m)
        s = e.sum(axis=1, keepdims=True)
        loss = (np.log(s) + m)[:, 0] - (logits * Y).sum(axis=1)
        dz = e / s - Y
    dz *= w[:, None]
    f = float(w @ loss) + 0.5 * float((W * W * lam).sum())
    gW = dz.T @ Z + lam * W
    return f, np.concatenate([gW.ravel(), dz.sum(axis=0) * bscale])


def fit_logistic(Z: np.ndarray, y: np.ndarray, n_classes: int, C: float,
                 sample_weight: np.ndarray | None = None, init: Logistic | None = None,
                 max_iter: int = 500, tol: float = 1e-4, memory: int = 10) -> Logistic:
    """Fit on features ``Z`` ``(N, r)`` and labels ``y`` ``(N,)`` in ``0..n_classes-1``.

    ``sample_weight`` ``(N,)`` (default ones) is normalised to sum 1, and the penalty
    scaled alike, so ``C`` means what it means in scikit-learn. ``init``: a previous
    solution to start from (warm start along a path of ``C``).
    """
    Z = np.asarray(Z, np.float64)
    n, r = Z.shape
    k = 1 if n_classes == 2 else n_classes
    Y = np.zeros((n, max(2, n_classes)))
    Y[np.arange(n), y] = 1.0
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    total = w.sum()
    w = w / total
    lam = 1.0 / (C * total)
    Z, col, pen, bscale = _conditioned(Z, w, lam, k, n_classes)
    theta = (np.concatenate([(init.W / col).ravel(), init.b / bscale]) if init is not None
             and init.W.shape == (k, r) else np.zeros(k * r + k))
    objective = partial(_loss_grad, Z=Z, Y=Y, w=w, k=k, lam=pen, bscale=bscale)
    theta, it = _lbfgs(objective, theta, max_iter, tol, memory)
    return Logistic(theta[: k * r].reshape(k, r) * col, theta[k * r:] * bscale, it)


def _conditioned(Z: np.ndarray, w: np.ndarray, lam: float, k: int, n_classes: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(Z * col, col (r,), penalty (r,), bscale)``: the problem rescaled for L-BFGS."""
    # Exact reparametrisations that make the problem well conditioned for L-BFGS: each
    # column scaled so that its curvature (penalty + roughly the data's) is about 1, and
    # the unpenalised intercept scaled to the penalty's curvature.
    h = 0.25 if k == 1 else 1.0 / n_classes
    col = 1.0 / np.sqrt(lam + h * (w @ (Z * Z)))
    Z = Z * col
    pen = lam * col * col
    bscale = max(1.0, float(np.sqrt(lam / h)))
    return Z, col, pen, bscale


def _lbfgs(objective: Callable[[np.ndarray], tuple[float, np.ndarray]], theta: np.ndarray,
           max_iter: int, tol: float, memory: int) -> tuple[np.ndarray, int]:
    """``(theta, iterations)``: L-BFGS from ``theta`` ``(P,)`` on ``objective`` (f, grad)."""
    f, g = objective(theta)
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    it = 0
    for it in range(1, max_iter + 1):
        if np.abs(g).max() < tol:
            break
        d = _direction(g, s_hist, y_hist)
        slope = g @ d
        if slope >= 0:  # not a descent direction: restart from the gradient
            s_hist.clear()
            y_hist.clear()
            d, slope = -g / max(1.0, np.linalg.norm(g)), -(g @ g) / max(1.0, np.linalg.norm(g))
        found = _backtrack(objective, theta, d, f, slope)
        if found is None:
            break  # no progress possible at this precision
        new, f_new, g_new = found
        s_vec, y_vec = new - theta, g_new - g
        if s_vec @ y_vec > 1e-12:
            s_hist.append(s_vec)
            y_hist.append(y_vec)
            if len(s_hist) > memory:
                s_hist.pop(0)
                y_hist.pop(0)
        converged = abs(f - f_new) <= 1e-12 * max(1.0, abs(f))
        theta, f, g = new, f_new, g_new
        if converged:
            break
    return theta, it


def _direction(g: np.ndarray, s_hist: list[np.ndarray], y_hist: list[np.ndarray]
               ) -> np.ndarray:
    """The search direction ``d = -H g`` ``(P,)`` by the L-BFGS two-loop recursion."""
    q = g.copy()
    alphas = []
    for s_i, y_i in zip(reversed(s_hist), reversed(y_hist)):
        a = (s_i @ q) / (y_i @ s_i)
        alphas.append(a)
        q -= a * y_i
    if s_hist:
        q *= (s_hist[-1] @ y_hist[-1]) / (y_hist[-1] @ y_hist[-1])
    else:
        q /= max(1.0, np.linalg.norm(g))
    for (s_i, y_i), a in zip(zip(s_hist, y_hist), reversed(alphas)):
        q += (a - (y_i @ q) / (y_i @ s_i)) * s_i
    return -q


def _backtrack(objective: Callable[[np.ndarray], tuple[float, np.ndarray]],
               theta: np.ndarray, d: np.ndarray, f: float, slope: float
               ) -> tuple[np.ndarray, float, np.ndarray] | None:
    """``(theta', f', grad')`` of the first Armijo step along ``d``, None within 40 halvings."""
    step = 1.0
    for _ in range(40):
        new = theta + step * d
        f_new, g_new = objective(new)
        if f_new <= f + 1e-4 * step * slope:
            return new, f_new, g_new
        step *= 0.5
    return None


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-row weights ``n / (K * n_c)``: every class weighs the same in the loss."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return (len(y) / (n_classes * np.maximum(counts, 1)))[y]
