"""Alerts: what is firing now and what was raised in the time range."""

import pandas as pd
import streamlit as st

from dashboards.common import load, start

view = start("Alerts")
a = load("alerts", view)

st.metric("Firing", f"{len(a.firing):,}")
st.subheader("Firing")
if a.firing:
    st.dataframe(pd.DataFrame(a.firing), hide_index=True, width="stretch")
else:
    st.success("Nothing is firing.")
st.subheader("Raised in the time range")
if a.recent:
    st.dataframe(pd.DataFrame(a.recent), hide_index=True, width="stretch")
else:
    st.caption("No alert was raised in this time range.")
