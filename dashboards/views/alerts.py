"""Alerts: what is firing now and what was raised in the time range."""

import pandas as pd
import streamlit as st

from dashboards.common import load, start

view = start("Alerts")
a = load("alerts", view)

st.metric("Firing", f"{len(a.firing):,}")
st.subheader("Firing")
if a.firing:
    st.table(pd.DataFrame(a.firing))
else:
    st.success("Nothing is firing.")
st.subheader("Raised in the time range")
if a.recent:
    st.table(pd.DataFrame(a.recent))
else:
    st.caption("No alert was raised in this time range.")
