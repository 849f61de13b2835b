import pytest

from core.errors import InvalidInput
from core.money import dollars, format_micros, parse_dollars


@pytest.mark.parametrize(
    "text, micros",
    [("1.00", 1_000_000), ("$0.25", 250_000), ("0.000001", 1), ("0.001", 1_000), ("0", 0), (" 3 ", 3_000_000),
     ("1000000000", 10**15), (0.25, 250_000), (2, 2_000_000)],
)
def test_dollar_strings_parse_to_exact_micro_dollars(text, micros):
    assert parse_dollars(text) == micros


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("NaN", "finite"), ("inf", "finite"), ("-1", "negative"), ("-0", "negative"), ("$-1", "negative"),
        ("0.0000001", "6 decimals"), ("1000000001", "absurdly large"), ("9" * 5000, "absurdly large"),
        ("one", "not a dollar amount"), ("", "not a dollar amount"), (True, "not a dollar amount"),
        # Decimal would read these; a person would misread them, so only plain ASCII decimals go in.
        ("1e-3", "not a plain decimal"), ("1e3", "not a plain decimal"), ("1_000", "not a plain decimal"),
        ("１", "not a plain decimal"), ("٣", "not a plain decimal"), ("+1", "not a plain decimal"), (".5", "not a plain decimal"),
        (1e-7, "not a plain decimal"),
    ],
)
def test_malformed_dollar_strings_are_refused_with_the_reason(text, complaint):
    with pytest.raises(InvalidInput, match=complaint):
        parse_dollars(text)


def test_micro_dollars_render_exactly():
    assert format_micros(1_000_000) == "$1.00"
    assert format_micros(1_234) == "$0.001234"
    assert dollars(250_000) == "0.250000"
