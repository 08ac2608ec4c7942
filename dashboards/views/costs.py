"""Costs and ROI: what was spent against what the same traffic would have cost."""

import altair as alt
import pandas as pd
import streamlit as st

from dashboards.common import load, share, start, usd

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
           "Hours the hourly rollup has not reached yet are shown as not rolled up yet.")

st.subheader("By model served")
st.dataframe(pd.DataFrame(c.by_model), hide_index=True, width="stretch")
