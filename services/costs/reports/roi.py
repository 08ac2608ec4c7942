"""Return on investment: configured investment against realised savings, with formulas.

Two figures are easily confused, so both are printed and named:

* **ROI** = (savings - investment) / investment: the *net* return. With a one-off
  investment of 170,000 and savings of 90,000 a month, 36 months give
  (3,240,000 - 170,000) / 170,000 = 1,806%.
* **savings / investment** = 3,240,000 / 170,000 = 1,906%: the *gross* multiple (the
  figure some spec texts call ROI). It is shown, labelled as what it is, never as ROI.

Monthly running costs (GPU hours, hosting) count as investment: over ``n`` months the
investment is ``one_off + monthly * n`` and payback is ``one_off / (savings - monthly)``
months (never, when running costs eat the savings).
"""

from __future__ import annotations

from dataclasses import dataclass

DAYS_PER_MONTH = 365.25 / 12
HORIZONS = (12, 36)


@dataclass(frozen=True, slots=True)
class RoiFigure:
    name: str
    value: float | None
    formula: str
    text: str


@dataclass(frozen=True, slots=True)
class Roi:
    one_off_usd: float
    monthly_cost_usd: float
    monthly_savings_usd: float

    @property
    def net_monthly_usd(self) -> float:
        return self.monthly_savings_usd - self.monthly_cost_usd

    @property
    def payback_months(self) -> float | None:
        """None when the net monthly saving is not positive: it never pays back."""
        if self.net_monthly_usd <= 0:
            return None
        return self.one_off_usd / self.net_monthly_usd

    def investment(self, months: int) -> float:
        return self.one_off_usd + self.monthly_cost_usd * months

    def roi(self, months: int) -> float | None:
        """(savings - investment) / investment over ``months``; None without investment."""
        invested = self.investment(months)
        if invested <= 0:
            return None
        return (self.monthly_savings_usd * months - invested) / invested

    def savings_multiple(self, months: int) -> float | None:
        """savings / investment over ``months`` (gross, not ROI)."""
        invested = self.investment(months)
        if invested <= 0:
            return None
        return self.monthly_savings_usd * months / invested

    def figures(self) -> list[RoiFigure]:
        """Each figure with its formula filled in, for reports and the demo."""
        s, i, m = self.monthly_savings_usd, self.one_off_usd, self.monthly_cost_usd
        payback = self.payback_months
        out = [
            RoiFigure("monthly savings", s, "realised savings / days in period x 30.44",
                      f"${s:,.2f}"),
            RoiFigure(
                "payback", payback, f"one-off / (monthly savings - monthly cost) = "
                f"{i:,.2f} / ({s:,.2f} - {m:,.2f})",
                "never (savings do not cover running costs)" if payback is None
                else f"{payback:,.1f} months",
            ),
        ]
        for n in HORIZONS:
            invested = self.investment(n)
            roi, multiple = self.roi(n), self.savings_multiple(n)
            out.append(RoiFigure(
                f"ROI {n} months", roi,
                f"(savings - investment) / investment = ({s:,.2f} x {n} - {invested:,.2f}) "
                f"/ {invested:,.2f}",
                _percent(roi),
            ))
            out.append(RoiFigure(
                f"savings / investment {n} months (gross, not ROI)", multiple,
                f"savings / investment = {s:,.2f} x {n} / {invested:,.2f}",
                _percent(multiple),
            ))
        return out


def monthly_rate(savings_usd: float, period_days: float) -> float:
    """Savings of a period scaled to an average month (365.25 / 12 days)."""
    if period_days <= 0:
        raise ValueError("the period must be longer than 0 days")
    return savings_usd / period_days * DAYS_PER_MONTH


def _percent(value: float | None) -> str:
    return "n/a (no investment configured)" if value is None else f"{value * 100:,.0f}%"
