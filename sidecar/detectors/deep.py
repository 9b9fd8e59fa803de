"""Deep-learning detectors: a bottleneck autoencoder over windows, pooled over all series.

Built on scikit-learn's ``MLPRegressor`` (no deep-learning framework is a dependency): the
network is small, the windows are short, and training on a few thousand pooled windows
takes well under a second.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sidecar.detectors.base import ParamError, require_int, require_number
from sidecar.detectors.ml import (
    _MAX_TRAIN_DOC,
    _MIN_BAND_DOC,
    _MIN_HISTORY_DOC,
    _SEED_DOC,
    _SENS_DOC,
    _WINDOW_DOC,
    WindowDetector,
)
from sidecar.detectors.registry import register


@register
class Autoencoder(WindowDetector):
    """Masked bottleneck autoencoder: reconstruct window + current point from the window alone.

    The network maps the ``window`` context through narrow hidden layers (default 32-8-32) back
    to all window + 1 points; the reconstruction of the current point is the expected value.
    The current point is masked at the input (left out) on purpose: an autoencoder that sees
    the value it judges learns to copy part of an anomaly into its reconstruction, and the
    shared score semantics need an expectation that does not move with the scored value
    (score 0 at the expectation, 1 at the band edge). Reconstructing the context through the
    bottleneck forces the network to learn the fleet's typical shapes rather than a bare
    forecast; the band is the series' residual spread, as for the other window detectors.
    """

    name = "autoencoder"
    family = "deep_learning"
    summary = "bottleneck MLP autoencoder over windows (current point masked) pooled over all series ± residual spread"
    param_docs = {
        "window": _WINDOW_DOC,
        "hidden_layers": "sizes of the hidden layers; the narrowest is the bottleneck",
        "alpha": "L2 penalty of the network's weights",
        "learning_rate": "initial Adam step size",
        "max_iter": "training epochs at most (stops earlier once the loss stops improving)",
        "sensitivity": _SENS_DOC,
        "min_history": _MIN_HISTORY_DOC,
        "min_band": _MIN_BAND_DOC,
        "max_train_windows": _MAX_TRAIN_DOC,
        "random_state": _SEED_DOC,
    }

    def __init__(
        self,
        *,
        window: int = 30,
        hidden_layers: tuple[int, ...] | list[int] = (32, 8, 32),
        alpha: float = 1e-3,
        learning_rate: float = 3e-3,
        max_iter: int = 40,
        sensitivity: float = 4.0,
        min_history: int = 60,
        min_band: float = 0.0,
        max_train_windows: int = 4000,
        random_state: int | None = 0,
    ) -> None:
        self.window = window
        self.hidden_layers = hidden_layers
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.sensitivity = sensitivity
        self.min_history = min_history
        self.min_band = min_band
        self.max_train_windows = max_train_windows
        self.random_state = random_state

    def _check_model(self) -> None:
        layers = self.hidden_layers
        if (
            not isinstance(layers, (list, tuple))
            or not layers
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers)
        ):
            raise ParamError("hidden_layers", f"must be a non-empty list of positive whole numbers, got {layers!r}")
        require_number(self, "alpha", minimum=0)
        require_number(self, "learning_rate", minimum=0, exclusive_minimum=True)
        require_int(self, "max_iter", minimum=1)

    def _fit_model(self, W: np.ndarray) -> Any:
        from sklearn.neural_network import MLPRegressor

        net = MLPRegressor(
            hidden_layer_sizes=tuple(self.hidden_layers),
            activation="relu",
            alpha=self.alpha,
            batch_size=min(256, W.shape[0]),
            learning_rate_init=self.learning_rate,
            max_iter=self.max_iter,
            tol=1e-4,
            n_iter_no_change=5,
            random_state=self.random_state,
        )
        W32 = W.astype(np.float32)
        return net.fit(W32[:, :-1], W32)

    def _predict(self, C: np.ndarray) -> np.ndarray:
        return self.model_.predict(C.astype(np.float32))[:, -1].astype(np.float64)
