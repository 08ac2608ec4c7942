"""Costs and ROI: what was spent against what the same traffic would have cost."""

from datetime import timedelta

import altair as alt
import pandas as pd
import streamlit as st

from dashboards.common import load, share, start, usd
from dashboards.data import TIME_RANGES
from services.costs.reports import Roi, investment, monthly_budgets, monthly_rate
from services.settings import load_settings

view = start("Costs and ROI")
c = load("costs", view)

cols = st.columns(4)
cols[0].metric("Spend", usd(c.cost_usd))
cols[1].metric("Baseline", usd(c.baseline_usd))
cols[2].metric("Saved", usd(c.saved_usd), share(c.saved_share), delta_color="off")
cols[3].metric("Cost per request", usd(c.cost_per_request_usd))
st.caption(
    "Baseline: each request priced on the baseline hosted model (OPTENGINE_BASELINE_MODEL) "
    "with no cache, routing or token optimisation. Saved = baseline - spend; "
    f"share saved = saved / baseline. Source: `{c.source}`."
)

series = pd.DataFrame(c.series)
if series.empty:
    st.info("No requests in this time range and filter: widen the time range.")
    st.stop()

st.subheader("Spend and baseline over time")
spend = series.melt("time", ["cost_usd", "baseline_usd"], var_name="series", value_name="usd")
st.altair_chart(alt.Chart(spend).mark_line(point=True).encode(
    x="time:T", y=alt.Y("usd:Q", title="USD"), color="series:N"), width="stretch")

st.subheader("Cost per request over time")
series["cost_per_request_usd"] = series["cost_usd"] / series["requests"]
st.altair_chart(alt.Chart(series).mark_line(point=True).encode(
    x="time:T", y=alt.Y("cost_per_request_usd:Q", title="USD")), width="stretch")

st.subheader("Savings by lever")
levers = pd.DataFrame([{"lever": k, "saved_usd": v} for k, v in c.saved_by_lever.items()])
st.altair_chart(alt.Chart(levers).mark_bar().encode(
    x=alt.X("saved_usd:Q", title="USD"), y=alt.Y("lever:N", sort="-x")), width="stretch")
st.caption("Each lever is credited with what it saved on the traffic the levers before it "
           "left (cost rollups, `services.costs.reports`); the levers add up to the saving. "
           "Hours the hourly rollup has not reached yet are attributed the same way.")

st.subheader("By model served")
st.dataframe(pd.DataFrame(c.by_model), hide_index=True, width="stretch")

st.subheader("Payback and ROI")
settings = load_settings()
spent = investment(settings)
days = TIME_RANGES[view.filters.time_range][0] / timedelta(days=1)
roi = Roi(spent.one_off_usd, spent.monthly_usd, monthly_rate(c.saved_usd, days))
st.dataframe(pd.DataFrame([{"figure": f.name, "value": f.text, "formula": f.formula}
                           for f in roi.figures()]), hide_index=True, width="stretch")
st.caption("Monthly savings: this range's saving scaled to an average month. Investment: "
           "OPTENGINE_COST_INVESTMENT_ONE_OFF_USD and OPTENGINE_COST_INVESTMENT_MONTHLY_USD.")

st.subheader("Budgets this month")
budgets = monthly_budgets(settings)
if budgets:
    m = load("month_to_date", view)
    rows = []
    for tenant, limit in sorted(budgets.items(), key=lambda b: b[0] or ""):
        spent_usd = m.total_usd if tenant is None else m.by_tenant.get(tenant, 0.0)
        projected = m.projected(spent_usd)
        rows.append({"tenant": tenant or "all tenants", "budget_usd": limit,
                     "spent_usd": spent_usd, "used": share(spent_usd / limit),
                     "projected_month_end_usd": projected,
                     "projected_over": None if projected is None else projected > limit})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption(f"Spent from {m.since:%Y-%m-%d} to {m.until:%Y-%m-%d %H:%M} UTC; "
               "projected = spent / days elapsed x days in the month.")
else:
    st.caption("No monthly budget configured (OPTENGINE_COST_MONTHLY_BUDGET_USD, or tenant "
               "budgets in the routing config).")

st.subheader("Spend per API key")
k = load("key_spending", view)
if k.keys:
    dollars = st.column_config.NumberColumn(format="$%.4f")
    st.dataframe(pd.DataFrame(k.keys), hide_index=True, width="stretch", column_config={
        "cost_usd": dollars, "budget_spent_usd": dollars,
        "cost_per_request_usd": st.column_config.NumberColumn(format="$%.6f"),
        "budget_used": st.column_config.NumberColumn(format="percent")})
else:
    st.caption("No request of this range was made with an API key, and no key has a budget.")
rolled = ("the cost rollup has not run yet" if k.rolled_up_to is None
          else f"rolled up to {k.rolled_up_to:%Y-%m-%d %H:%M} UTC")
tenant = "all tenants" if view.filters.tenant is None else f"tenant {view.filters.tenant}"
cut = f" The {len(k.keys)} highest spenders of {k.found} keys are listed." \
    if k.found > len(k.keys) else ""
st.caption(
    f"Whole UTC hours from {k.since:%Y-%m-%d %H:00} to {k.until:%Y-%m-%d %H:00} "
    f"(`key_cost_rollups`, {rolled}), {tenant}; the key rollup has no model and no "
    "baseline, so the model filter and savings do not apply. A key's budget "
    "(its stored limit, else the routing config's `key:<id>`) is held against its spend in "
    "the UTC budget period holding the range's end: budget_spent_usd, budget_used. "
    f"Escalated cascade attempts count as spend, not as requests.{cut}")

st.subheader("Cost reports")
reports = load("cost_reports", view)
if reports:
    st.dataframe(pd.DataFrame([{k: r[k] for k in ("kind", "tenant", "period_start",
                                                   "period_end", "created_at")}
                               for r in reports]), hide_index=True, width="stretch")
    newest = reports[0]
    label = f"{newest['kind']} report {newest['period_start']:%Y-%m-%d}"
    cols = st.columns(2)
    cols[0].download_button(f"Download the {label} (CSV)", newest["csv"],
                            file_name=f"cost-report-{newest['id']}.csv", mime="text/csv")
    cols[1].download_button(f"Download the {label} (Markdown)", newest["markdown"],
                            file_name=f"cost-report-{newest['id']}.md", mime="text/markdown")
else:
    st.caption("No cost report yet: the cost_management flow writes a daily one after "
               "midnight UTC (`optengine report costs` writes one on demand).")
