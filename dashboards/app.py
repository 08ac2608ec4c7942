"""Entry point of the dashboard: ``streamlit run dashboards/app.py`` (what
``optengine dashboard`` does). Each capability adds its page to ``PAGES``."""

import streamlit as st

PAGES = [
    st.Page("views/overview.py", title="Overview", default=True),
    st.Page("views/costs.py", title="Costs and ROI"),
    st.Page("views/cache.py", title="Cache, tokens, routing"),
    st.Page("views/alerts.py", title="Alerts"),
]

st.set_page_config(page_title="Optimization Engine", layout="wide")
st.navigation(PAGES).run()
