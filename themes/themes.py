"""The console's three Textual themes and the extra theme variables they define.

``acgs-dark`` is the default; ``acgs-light`` suits bright rooms and light
terminals; ``acgs-high-contrast`` uses pure, saturated colours on black for
poor screens and low vision. Each state on screen also carries a symbol and a
word (see :mod:`widgets.verdicts`), so no theme has to carry meaning by colour
alone.

Extra variables (``$env-blue``, ``$env-green``, ``$stale``) colour the two
environments and greyed-out stale data; :data:`VARIABLE_DEFAULTS` gives them
values under any other Textual theme the operator picks from the palette.
"""

from __future__ import annotations

from pathlib import Path

from textual.theme import Theme

DEFAULT_THEME = "acgs-dark"
"""The theme used when nothing else is chosen."""

CSS_PATH = Path(__file__).with_name("console.tcss")
"""The shared stylesheet of the console's screens."""

VARIABLE_DEFAULTS: dict[str, str] = {
    "env-blue": "#3b82f6",
    "env-green": "#22c55e",
    "stale": "#808080",
}
"""Values of the console's own variables under themes that do not define them."""

ACGS_DARK = Theme(
    name="acgs-dark",
    primary="#58A6FF",
    secondary="#A371F7",
    accent="#F0883E",
    foreground="#D0D7DE",
    background="#0D1117",
    surface="#161B22",
    panel="#21262D",
    success="#3FB950",
    warning="#D29922",
    error="#F85149",
    dark=True,
    variables={
        "env-blue": "#58A6FF",
        "env-green": "#3FB950",
        "stale": "#6E7681",
        "footer-key-foreground": "#58A6FF",
    },
)

ACGS_LIGHT = Theme(
    name="acgs-light",
    primary="#0969DA",
    secondary="#8250DF",
    accent="#BC4C00",
    foreground="#1F2328",
    background="#FFFFFF",
    surface="#F6F8FA",
    panel="#EAEEF2",
    success="#1A7F37",
    warning="#9A6700",
    error="#CF222E",
    dark=False,
    variables={
        "env-blue": "#0969DA",
        "env-green": "#1A7F37",
        "stale": "#8C959F",
        "footer-key-foreground": "#0969DA",
    },
)

ACGS_HIGH_CONTRAST = Theme(
    name="acgs-high-contrast",
    primary="#00FFFF",
    secondary="#FF00FF",
    accent="#FFFF00",
    foreground="#FFFFFF",
    background="#000000",
    surface="#000000",
    panel="#1A1A1A",
    success="#00FF00",
    warning="#FFFF00",
    error="#FF4040",
    dark=True,
    luminosity_spread=0.3,
    text_alpha=1.0,
    variables={
        "env-blue": "#00BFFF",
        "env-green": "#00FF00",
        "stale": "#A0A0A0",
        "border": "#FFFFFF",
        "footer-key-foreground": "#FFFF00",
    },
)

THEMES: tuple[Theme, ...] = (ACGS_DARK, ACGS_LIGHT, ACGS_HIGH_CONTRAST)
"""Every console theme, the default first."""

THEME_NAMES: tuple[str, ...] = tuple(t.name for t in THEMES)
"""Their names, in cycling order."""
