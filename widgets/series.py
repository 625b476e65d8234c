"""A sparkline's data: recent samples folded into fixed, count-aligned buckets.

A sparkline that re-buckets a sliding window changes every column on every
sample, so the terminal gets the whole line again each second. Here a column
is a fixed run of ``per`` consecutive samples (aligned to the sample count),
summarised by the metric's worst value, and drawn once it is complete: the
sparkline changes once per ``per`` samples. Over SSH on a
poor link that is the difference between a line a second and a line every
few seconds.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from fractions import Fraction

Summary = Callable[[Sequence[float]], float]

BARS = "▁▂▃▄▅▆▇█"
"""The eight bar heights of a one-line sparkline."""


def worst_of(field: str) -> Summary:
    """How a column summarises a metric: its worst value (max latency, min cache hit ...)."""
    return min if field in ("requests_per_second", "cache_hit_rate", "compliance_score") else max


class BucketedSeries:
    """Up to ``capacity`` recent samples, in ``columns`` buckets of ``per`` samples each."""

    def __init__(self, capacity: int, columns: int, summary: Summary = max) -> None:
        """Create an empty series.

        Args:
            capacity: About how many samples to keep (the span of the sparkline).
            columns: How many buckets (drawn columns) to keep.
            summary: Folds a bucket into the value drawn.
        """
        self.columns = max(1, columns)
        self.per = max(1, math.ceil(max(1, capacity) / self.columns))
        self.summary = summary
        self._buckets: deque[list[float]] = deque(maxlen=self.columns)
        self._count = 0

    def add(self, value: float) -> None:
        """Add one sample."""
        if self._count % self.per == 0:
            self._buckets.append([])
        self._buckets[-1].append(value)
        self._count += 1

    def series(self) -> list[float]:
        """One summarised value per bucket, oldest first (including the one filling)."""
        return [self.summary(bucket) for bucket in self._buckets]

    def drawn(self) -> list[float]:
        """What the sparkline draws: complete buckets only, so it changes once per bucket.

        Until the first bucket is complete, the partial one (a start has to show something).
        """
        complete = [b for b in self._buckets if len(b) == self.per]
        if not complete:
            return self.series()
        return [self.summary(bucket) for bucket in complete]

    @property
    def samples(self) -> list[float]:
        """Every sample kept, oldest first."""
        return [v for bucket in self._buckets for v in bucket]

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets)


def spark_bars(values: Sequence[float], width: int, summary: Summary = max) -> str:
    """A one-line sparkline as text: ``width`` bars scaled between the minimum and maximum.

    The same drawing as Textual's ``Sparkline`` (values partitioned into
    ``width`` buckets, each summarised), as plain characters: drawn in one
    colour it costs one escape sequence per line instead of one per bar.

    Args:
        values: The values, oldest first.
        width: Columns to fill.
        summary: Folds the values that share a column.
    """
    if width <= 0:
        return ""
    if not values:
        return BARS[0] * width
    if len(values) == 1:
        return BARS[-1] * width
    low, high = min(values), max(values)
    extent = high - low or 1
    step = Fraction(len(values), width)
    buckets = [part for i in range(width) if (part := values[int(step * i) : int(step * (i + 1))])]
    stride = len(buckets) / width
    bars: list[str] = []
    position = 0.0
    for _ in range(width):
        ratio = (summary(buckets[int(position)]) - low) / extent
        bars.append(BARS[int(ratio * (len(BARS) - 1))])
        position += stride
    return "".join(bars)
