"""Prometheus-style durations ("30s", "1h30m", "2d") to and from seconds."""

from __future__ import annotations

import re

_UNITS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
# Same grammar as Prometheus' model.ParseDuration: units in decreasing order, each at most once.
_RE = re.compile(
    r"^(?:(?P<y>\d+)y)?(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?"
    r"(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?$"
)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``1h30m``; raises ValueError naming the bad text."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string such as '30s' or '5m', got {text!r}")
    match = _RE.match(text.strip())
    if not text.strip() or match is None or not any(match.groupdict().values()):
        raise ValueError(f"invalid duration {text!r}: use units y, w, d, h, m, s, ms, e.g. '30s', '5m', '1h30m'")
    return float(sum(int(v) * _UNITS[k] for k, v in match.groupdict().items() if v))


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration string for ``seconds`` (used in logs and the landing page)."""
    if seconds <= 0:
        return "0s"
    ms = round(seconds * 1000)
    parts = []
    for unit, size in (("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)
