"""Overview: traffic, errors, latency and who carried the load."""

import altair as alt
import pandas as pd
import streamlit as st

from dashboards.common import load, ms, share, start

view = start("Overview")
o = load("overview", view)

cols = st.columns(3)
cols[0].metric("Requests", f"{o.requests:,}")
cols[1].metric("Errors", f"{o.errors:,}", share(o.error_rate), delta_color="off")
tps = o.output_tokens_per_s
cols[2].metric("Output throughput", "n/a" if tps is None else f"{tps:,.1f} tokens/s")
cols = st.columns(4)
cols[0].metric("TTFT p50", ms(o.ttft_p50_ms))
cols[1].metric("TTFT p95", ms(o.ttft_p95_ms))
cols[2].metric("Latency p50", ms(o.latency_p50_ms))
cols[3].metric("Latency p95", ms(o.latency_p95_ms))
if o.sampled >= view.filters.sample_rows:
    st.caption(f"Percentiles from the newest {o.sampled:,} successful requests.")
st.caption(f"Counts from `{o.source}`.")

series = pd.DataFrame(o.series)
if series.empty:
    st.info("No requests in this time range and filter: widen the time range.")
    st.stop()

st.subheader("Requests and errors")
counts = series.melt("time", ["requests", "errors"], var_name="series", value_name="count")
st.altair_chart(alt.Chart(counts).mark_line(point=True).encode(
    x="time:T", y="count:Q", color="series:N"), width="stretch")

st.subheader("TTFT and latency percentiles")
if o.percentiles:
    st.altair_chart(alt.Chart(pd.DataFrame(o.percentiles)).mark_line(point=True).encode(
        x="time:T", y=alt.Y("ms:Q", title="ms"), color="series:N"), width="stretch")

st.subheader("Output throughput (tokens/s)")
st.altair_chart(alt.Chart(series).mark_area(opacity=0.6).encode(
    x="time:T", y=alt.Y("output_tokens_per_s:Q", title="tokens/s")), width="stretch")

st.subheader("Requests per worker")
if o.worker_load:
    st.altair_chart(alt.Chart(pd.DataFrame(o.worker_load)).mark_bar().encode(
        x="time:T", y="requests:Q", color="worker:N"), width="stretch")
else:
    st.caption("No request in this range went to a worker (cache hits and errors only).")
