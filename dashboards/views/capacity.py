"""Capacity: demand forecasts against the demand measured, and the autoscaler's
decisions (demand_forecasting and forecast_backtest flows)."""

import altair as alt
import pandas as pd
import streamlit as st

from dashboards.common import load, share, start

view = start("Capacity")
c = load("capacity", view)

cols = st.columns(4)
cols[0].metric("Models scaled", f"{len(c.latest):,}")
cols[1].metric("Desired replicas", f"{c.desired_replicas:,}")
cols[2].metric("Scaling decisions", f"{len(c.decisions):,}")
cols[3].metric("Not carried out", f"{c.not_actuated:,}")

if not c.decisions:
    st.info("No scaling decision in this time range: the demand_forecasting flow writes "
            "one per model each run (`optengine flows run demand_forecasting`).")
else:
    st.subheader("Now, per model")
    latest = pd.DataFrame(c.latest)
    latest["recent_wape"] = latest["recent_wape"].map(share)
    st.dataframe(latest[["model", "time", "current", "desired", "reactive", "predictive",
                         "forecaster", "recent_wape", "reason"]],
                 hide_index=True, width="stretch")
    st.subheader("Demand: forecast against measured (tokens/s)")
    if c.demand:
        st.altair_chart(alt.Chart(pd.DataFrame(c.demand)).mark_line(point=True).encode(
            x="time:T", y=alt.Y("tokens_s:Q", title="tokens/s"), color="series:N",
            strokeDash="model:N"), width="stretch")
    st.caption("Measured: the demand the decision saw over its interval. Forecast mean: the "
               "chosen forecaster's next 10-s bin, drawn at that bin. Forecast upper: the "
               "interval's top over the cold-start horizon, which the replicas are sized for.")
    st.subheader("Replicas: current and desired")
    replicas = pd.DataFrame(c.decisions).melt(["time", "model"], ["current", "desired"],
                                              var_name="series", value_name="replicas")
    st.altair_chart(alt.Chart(replicas).mark_line(interpolate="step-after").encode(
        x="time:T", y="replicas:Q", color="series:N", strokeDash="model:N"), width="stretch")
    st.subheader("Decisions")
    st.dataframe(pd.DataFrame(c.decisions[::-1])[
        ["time", "model", "current", "desired", "actuated", "actuator_error", "reason"]],
        hide_index=True, width="stretch")

st.subheader("Forecasters: latest backtest")
if c.scores:
    st.dataframe(pd.DataFrame(c.scores), hide_index=True, width="stretch")
else:
    st.caption("No backtest yet: the forecast_backtest flow scores every forecaster per "
               "model and picks one (`optengine flows run forecast_backtest`).")
