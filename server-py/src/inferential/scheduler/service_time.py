"""Per-model service-time estimate: ``a + b * batch_size`` milliseconds."""

from __future__ import annotations

import math
from collections import deque
from typing import Optional

MARGIN_SIGMAS = 2.0


class ServiceTimeModel:
    """Least-squares line through the last ``window`` (batch size, ms) points.

    The estimate adds ``MARGIN_SIGMAS`` times the fit's root-mean-square
    residual, so ``edf``'s batch sizing plans for a bad case (about the 95th
    percentile for normal noise): planning on the mean would miss about half of
    the tight deadlines it aims for. Admission control, whose rejections are
    final, uses the mean (``margin=False``). Before any point it knows nothing
    (``estimate`` returns None, and admission control admits). Until two batch
    sizes have been seen the slope is unknown and the line is flat at the mean,
    which underestimates larger batches: early decisions err towards running
    work rather than shedding it.
    """

    def __init__(self, window: int = 64) -> None:
        self._points: deque[tuple[int, float]] = deque(maxlen=window)
        # Running sums over the window, so a new point costs O(1), not a refit.
        self._n = 0
        self._sx = self._sy = self._sxx = self._sxy = self._syy = 0.0
        self._a = 0.0
        self._b = 0.0
        self._margin = 0.0

    def __len__(self) -> int:
        return len(self._points)

    def record(self, batch_size: int, ms: float) -> None:
        if batch_size < 1 or not math.isfinite(ms) or ms < 0:
            return
        if len(self._points) == self._points.maxlen:
            self._add(*self._points[0], sign=-1.0)
        self._points.append((batch_size, ms))
        self._add(batch_size, ms, sign=1.0)
        self._fit()

    def _add(self, x: float, y: float, sign: float) -> None:
        self._n += int(sign)
        self._sx += sign * x
        self._sy += sign * y
        self._sxx += sign * x * x
        self._sxy += sign * x * y
        self._syy += sign * y * y

    @property
    def margin_ms(self) -> float:
        """What ``estimate`` adds for planning: ``MARGIN_SIGMAS`` residual deviations."""
        return self._margin

    def estimate(self, batch_size: int, *, margin: bool = True) -> Optional[float]:
        """Planning estimate of a batch's run time (ms); ``margin=False``: the fitted mean."""
        if not self._points:
            return None
        return self._a + self._b * batch_size + (self._margin if margin else 0.0)

    def _fit(self) -> None:
        n = self._n
        mean_x, mean_y = self._sx / n, self._sy / n
        var_x = self._sxx - n * mean_x * mean_x
        b = 0.0
        if var_x > 1e-9:
            b = max(0.0, (self._sxy - n * mean_x * mean_y) / var_x)
        a = mean_y - b * mean_x
        if a < 0:  # a negative fixed cost is noise: keep the line through the mean
            a, b = 0.0, mean_y / mean_x
        self._a, self._b = a, b
        # Residual sum of squares from the sums: sum (y - a - b x)^2, expanded.
        ssr = self._syy - 2 * a * self._sy - 2 * b * self._sxy + n * a * a + 2 * a * b * self._sx + b * b * self._sxx
        self._margin = MARGIN_SIGMAS * math.sqrt(max(0.0, ssr) / n)
