"""The console's figures: money in the programme's currency, and the period picker."""

from __future__ import annotations

from datetime import date

import pytest

from loyalty.console.figures import chosen_period, money, money_number, percent, unit_cost
from loyalty.errors import InvalidInput

TODAY = date(2026, 12, 7)


def test_money_is_rounded_to_the_minor_unit_with_separators() -> None:
    assert money(1_234_567_890, "CNY") == "1,234.57 CNY"
    assert money(5_000, "CNY") == "0.01 CNY"  # half a fen rounds up
    assert money(4_999, "CNY") == "0.00 CNY"
    assert money(-2_500_000, "EUR") == "-2.50 EUR"
    assert money(1_500_000_000, "JPY") == "1,500 JPY"
    assert money(1_234_567, "KWD") == "1.235 KWD"
    assert money_number(13_000_000, "CNY") == 13.0
    assert money_number(4_000, "CNY") == 0.0


def test_a_cost_per_point_keeps_the_decimals_below_the_minor_unit() -> None:
    assert unit_cost(10_000, "CNY") == "0.01 CNY"
    assert unit_cost(12_500, "CNY") == "0.0125 CNY"
    assert unit_cost(1, "CNY") == "0.000001 CNY"
    assert unit_cost(2_000_000, "CNY") == "2.00 CNY"
    assert unit_cost(1_000_000, "JPY") == "1 JPY"


def test_percent() -> None:
    assert percent(1, 3) == 33.3
    assert percent(5, 0) is None


def test_the_period_picker() -> None:
    assert chosen_period({}, TODAY) == (date(2026, 11, 8), TODAY, 30)
    assert chosen_period({"days": "7"}, TODAY) == (date(2026, 12, 1), TODAY, 7)
    assert chosen_period({"days": "90"}, TODAY)[0] == date(2026, 9, 9)
    # Dates win over the preset; a missing end is today, a missing start 30 days before the end.
    assert chosen_period({"days": "7", "since": "2026-01-01", "until": "2026-01-31"}, TODAY) == (
        date(2026, 1, 1), date(2026, 1, 31), None,
    )  # fmt: skip
    assert chosen_period({"since": "2026-12-01"}, TODAY) == (date(2026, 12, 1), TODAY, None)
    assert chosen_period({"until": "2026-06-30"}, TODAY) == (date(2026, 6, 1), date(2026, 6, 30), None)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"days": "12"}, "days"),
        ({"days": "-7"}, "days"),
        ({"since": "2026-13-01"}, "since"),
        ({"until": "soon"}, "until"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "since"),
        ({"since": "2020-01-01", "until": "2026-01-01"}, "until"),
    ],
)
def test_a_bad_period_names_its_field(values: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        chosen_period(values, TODAY)
    assert refused.value.extra["field"] == field
