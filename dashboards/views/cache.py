"""Cache, tokens, routing: what each optimisation lever did to the traffic."""

import altair as alt
import pandas as pd
import streamlit as st

from dashboards.common import load, share, start

view = start("Cache, tokens, routing")
r = load("cache_tokens_routing", view)

st.subheader("Response cache")
cols = st.columns(3)
cols[0].metric("Cache lookups", f"{r.lookups:,}")
cols[1].metric("Hits", f"{sum(r.hits_by_layer.values()):,}")
cols[2].metric("Hit rate", share(r.hit_rate))
hits = pd.DataFrame([{"tier": k, "hits": v} for k, v in r.hits_by_layer.items()])
st.altair_chart(alt.Chart(hits).mark_bar().encode(x="tier:N", y="hits:Q"),
                width="stretch")
report = r.latest_report
if report is None:
    st.caption("No cache report yet: the cache_optimization flow writes one per run "
               "(`optengine flows run cache_optimization`).")
else:
    st.markdown(f"Latest cache report ({report['created_at']:%Y-%m-%d %H:%M} UTC): overall "
                f"hit rate {share(report['overall_hit_rate'])} of {report['lookups']:,} "
                "lookups. Per tier, against its target:")
    tiers = pd.DataFrame(report["tiers"])
    st.dataframe(tiers, hide_index=True, width="stretch")
    if not tiers.empty:
        long = tiers.melt("tier", ["hit_rate", "target"], var_name="series", value_name="rate")
        st.altair_chart(alt.Chart(long).mark_bar().encode(
            x="tier:N", xOffset="series:N", y=alt.Y("rate:Q", axis=alt.Axis(format="%")),
            color="series:N"), width="stretch")
if r.report_history:
    st.markdown("Overall hit rate per cache report:")
    st.altair_chart(alt.Chart(pd.DataFrame(r.report_history)).mark_line(point=True).encode(
        x="time:T", y=alt.Y("hit_rate:Q", axis=alt.Axis(format="%"))),
        width="stretch")

st.subheader("Tokens")
cols = st.columns(3)
cols[0].metric("Prompt tokens before optimisation", f"{r.tokens_before:,}")
cols[1].metric("After", f"{r.tokens_after:,}")
cols[2].metric("Tokens saved", f"{r.tokens_saved:,}")
if r.saved_by_stage:
    stages = pd.DataFrame([{"stage": k, "tokens_saved": v} for k, v in r.saved_by_stage.items()])
    st.altair_chart(alt.Chart(stages).mark_bar().encode(x="tokens_saved:Q", y="stage:N"),
                    width="stretch")

st.subheader("Routing")
cols = st.columns(3)
cols[0].metric("Cascade escalations", f"{r.cascade_escalated:,}")
cols[1].metric("Escalation rate", share(r.escalation_rate))
router = r.router_version
cols[2].metric("Router version", "shipped model" if router is None else router["version"])
if r.routing_share:
    st.altair_chart(alt.Chart(pd.DataFrame(r.routing_share)).mark_arc().encode(
        theta="requests:Q", color="model:N"), width="stretch")
    st.dataframe(pd.DataFrame(r.routing_share), hide_index=True, width="stretch")
else:
    st.caption("No routed requests in this range (model routing is off or unused).")
