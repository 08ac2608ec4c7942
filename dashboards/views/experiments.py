"""Experiments: running A/B tests and canary rollouts with their current step and the
latest analysis of the experiments flow."""

import pandas as pd
import streamlit as st

from dashboards.common import load, start

view = start("Experiments")
e = load("experiments", view)

cols = st.columns(3)
cols[0].metric("Running A/B tests", f"{e.count('ab'):,}")
cols[1].metric("Running canaries", f"{e.count('canary'):,}")
cols[2].metric("Paused", f"{e.count('ab', 'paused') + e.count('canary', 'paused'):,}")

st.subheader("Live")
if e.live:
    st.dataframe(pd.DataFrame(e.live), hide_index=True, width="stretch")
    st.caption("A canary's step is its place in the rollout plan; canary share is the "
               "treatment's share of units at that step. Last decision: the experiments "
               "flow's latest analysis (hold, advance, promote or rollback).")
else:
    st.info("No experiment is running. Create one with `optengine experiments create` "
            "and start it; the experiments flow analyses it every minute.")
st.subheader("Ended in the time range")
if e.ended:
    st.dataframe(pd.DataFrame(e.ended), hide_index=True, width="stretch")
else:
    st.caption("No experiment ended in this time range.")
