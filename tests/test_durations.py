import pytest

from sidecar.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), ("1y", 31536000), ("250ms", 0.25), ("1h0m5s", 3605)],
)
def test_prometheus_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "3x", "1m1h", "-5s", "1.5h", "s", " ", "5 m"])
def test_bad_durations_are_rejected_with_the_text_in_the_message(text):
    with pytest.raises(ValueError) as err:
        parse_duration(text)
    assert repr(text) in str(err.value)


def test_non_strings_are_rejected():
    with pytest.raises(ValueError):
        parse_duration(30)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds, text", [(30, "30s"), (5400, "1h30m"), (0.25, "250ms"), (90061, "1d1h1m1s"), (0, "0s")])
def test_format_duration_round_trips(seconds, text):
    assert format_duration(seconds) == text
    if seconds:
        assert parse_duration(text) == seconds
