"""ROI figures and their formulas, pinned on the spec's example."""

from __future__ import annotations

import pytest

from services.costs.reports import Roi, monthly_rate


def test_the_spec_example_payback_and_36_month_roi() -> None:
    roi = Roi(one_off_usd=170_000, monthly_cost_usd=0, monthly_savings_usd=90_000)
    assert round(roi.payback_months, 1) == 1.9
    assert roi.roi(36) == pytest.approx((90_000 * 36 - 170_000) / 170_000)
    assert round(roi.roi(36) * 100) == 1806
    assert round(roi.savings_multiple(36) * 100) == 1906  # the spec's "1,906%": not ROI
    figures = {f.name: f for f in roi.figures()}
    assert figures["payback"].text == "1.9 months"
    assert figures["ROI 36 months"].text == "1,806%"
    assert "(savings - investment) / investment" in figures["ROI 36 months"].formula
    assert "90,000.00 x 36 - 170,000.00" in figures["ROI 36 months"].formula
    assert figures["savings / investment 36 months (gross, not ROI)"].text == "1,906%"
    assert figures["ROI 12 months"].text == f"{(90_000 * 12 - 170_000) / 170_000 * 100:,.0f}%"


def test_running_costs_count_as_investment() -> None:
    roi = Roi(one_off_usd=10_000, monthly_cost_usd=2_000, monthly_savings_usd=7_000)
    assert roi.payback_months == pytest.approx(2.0)
    assert roi.roi(12) == pytest.approx((7_000 * 12 - 34_000) / 34_000)
    never = Roi(one_off_usd=10_000, monthly_cost_usd=8_000, monthly_savings_usd=7_000)
    assert never.payback_months is None
    assert {f.name: f.text for f in never.figures()}["payback"].startswith("never")


def test_without_investment_roi_is_not_a_number_but_said_so() -> None:
    roi = Roi(0, 0, 500)
    assert roi.roi(12) is None and roi.payback_months == 0
    assert "no investment" in {f.name: f.text for f in roi.figures()}["ROI 12 months"]


def test_monthly_rate_scales_a_period_to_an_average_month() -> None:
    assert monthly_rate(100.0, 365.25 / 12) == pytest.approx(100.0)
    assert monthly_rate(10.0, 1.0) == pytest.approx(304.375)
    with pytest.raises(ValueError):
        monthly_rate(1.0, 0)
