"""A metric tile: label and level, value with unit, and a sparkline of recent values.

Three lines::

    P99 latency        ✔ ok
    2.10 ms
    ▁▂▂▃▂▁▂▅▇█▆▃▂

An unknown value reads ``unknown`` with the reason, never the last good
number; a stale value is greyed and says since when. The history keeps only
fresh, finite samples, one per sweep, bucketed so the sparkline changes only
when a column does (see :mod:`widgets.series`).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widget import Widget

from backends.models import MetricValue
from widgets.repaint import Painted, QuietStatic, paint, refresh_changed
from widgets.series import BucketedSeries, Summary, spark_bars, worst_of
from widgets.styling import badge_part, level_style, set_level_class
from widgets.verdicts import Badge, Level, clock_time, format_metric, level_badge, metric_number

SPARK_COLUMNS = 30
"""Columns a sparkline keeps (each one summarises history/30 samples)."""


class SparkBars(Widget):
    """A one-line sparkline in one colour (the tile's level), repainting only what moved.

    Textual's ``Sparkline`` colours every bar on its own (a gradient), so each
    redraw sends an escape sequence per bar: about 700 bytes per sparkline
    when a column completes, eight sparklines on the dashboard. One colour is
    one escape sequence per line; the bar heights carry the values.
    """

    DEFAULT_CSS = """
    SparkBars {
        height: 1;
        color: $primary;
    }
    """

    def __init__(self, summary: Summary = max, *, classes: str | None = None) -> None:
        """Create an empty sparkline.

        Args:
            summary: Folds the values that share a column (the metric's worst).
            classes: CSS classes.
        """
        super().__init__(classes=classes)
        self.summary = summary
        self._values: list[float] = []
        self._painted: Painted | None = None

    @property
    def data(self) -> list[float]:
        """The values drawn, oldest first."""
        return list(self._values)

    @data.setter
    def data(self, values: list[float]) -> None:
        self._values = list(values)
        before, self._painted = self._painted, paint(self, self.render())
        if not refresh_changed(self, before, self._painted):
            self.refresh()

    def render(self) -> Content:
        """The bars, as wide as the widget."""
        return Content(spark_bars(self._values, self.size.width, self.summary))


class MetricTile(Vertical):
    """One metric of one environment, with its recent history."""

    DEFAULT_CSS = """
    MetricTile {
        height: 3;
        width: 1fr;
        padding: 0 1 0 0;
    }
    MetricTile > Static {
        height: 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    MetricTile > .tile--value {
        text-style: bold;
    }
    MetricTile.-warning > SparkBars {
        color: $warning;
    }
    MetricTile.-critical > SparkBars {
        color: $error;
    }
    MetricTile.-unknown > SparkBars, MetricTile.-stale > SparkBars {
        color: $stale;
    }
    MetricTile.-unknown > .tile--value, MetricTile.-stale > .tile--value {
        color: $stale;
        text-style: none;
    }
    """

    def __init__(
        self, field: str, label: str, *, history: int = 300, id: str | None = None
    ) -> None:
        """Create a tile.

        Args:
            field: The :class:`~backends.models.EnvironmentMetrics` field shown.
            label: What the tile is called on screen.
            history: How many samples the sparkline keeps.
            id: The widget id.
        """
        super().__init__(id=id)
        self.field = field
        self.label = label
        self.series = BucketedSeries(history, SPARK_COLUMNS, worst_of(field))
        """Recent fresh values, bucketed for the sparkline."""
        self._drawn: list[float] = []
        self._last_sample: object = None
        self._shown_head: tuple[object, ...] = ()
        self._shown_value: tuple[object, ...] = ()
        self.value_text = "unknown"
        """The value line as shown (plain text)."""
        self.level = Level.UNKNOWN
        """The level shown."""

    def compose(self) -> ComposeResult:
        """Head line, value line, sparkline."""
        yield QuietStatic(self._head(level_badge(Level.UNKNOWN), False), classes="tile--head")
        yield QuietStatic("unknown", classes="tile--value")
        yield SparkBars(worst_of(self.field))

    @property
    def history(self) -> list[float]:
        """Recent fresh values, oldest first."""
        return self.series.samples

    def _head(self, badge: Badge, stale: bool) -> Content:
        return Content.assemble((self.label, "bold"), "  ", badge_part(badge, stale=stale))

    def show(
        self,
        metric: MetricValue,
        level: Level,
        *,
        sample: object,
        panel_stale: bool = False,
    ) -> None:
        """Show one sweep's value of the metric.

        Args:
            metric: The measured value.
            level: Its level against the thresholds (see :func:`widgets.verdicts.metric_level`).
            sample: Identifies the sweep; a value is added to the history once per sweep.
            panel_stale: The whole snapshot is stale (grey the tile out).
        """
        value = metric_number(metric)
        if sample != self._last_sample:
            self._last_sample = sample
            if value is not None and not metric.stale and not panel_stale:
                self.series.add(value)
                drawn = self.series.drawn()
                if drawn != self._drawn:
                    self._drawn = drawn
                    self.query_one(SparkBars).data = drawn
        shown_level = Level.STALE if panel_stale else level
        if value is None or level is Level.UNKNOWN:
            text = f"unknown: {metric.error or 'no data'}"
            head = level_badge(Level.UNKNOWN)
        elif metric.stale:
            text = f"{format_metric(self.field, value)}  since {clock_time(metric.sampled_at)}"
            head = Badge(Level.STALE, "stale")
        else:
            text = format_metric(self.field, value)
            head = level_badge(level)
        if panel_stale and head.level is not Level.UNKNOWN:
            head = Badge(Level.STALE, "stale")
        self.tooltip = (
            f"{self.label}: {text}\nsource: {metric.source or 'unknown'}"
            f"\nsampled at {clock_time(metric.sampled_at)} UTC"
        )
        self.value_text = text
        self.level = shown_level
        set_level_class(self, shown_level)
        # Head and value repaint separately: a number that moves leaves the head alone.
        head_key = (head, panel_stale)
        if head_key != self._shown_head:
            self._shown_head = head_key
            self.query_one(".tile--head", QuietStatic).show_content(self._head(head, panel_stale))
        value_key = (text, shown_level, level)
        if value_key != self._shown_value:
            self._shown_value = value_key
            value_style = "" if shown_level in (Level.UNKNOWN, Level.STALE) else level_style(level)
            self.query_one(".tile--value", QuietStatic).show_content(
                Content.assemble((text, value_style))
            )
