"""Entry point of the dashboard: ``streamlit run dashboards/app.py`` (what
``optengine dashboard`` does). Each capability adds its page to ``PAGES``."""

import streamlit as st

from dashboards.auth import require_login

PAGES = [
    st.Page("views/overview.py", title="Overview", default=True),
    st.Page("views/costs.py", title="Costs and ROI"),
    st.Page("views/cache.py", title="Cache, tokens, routing"),
    st.Page("views/capacity.py", title="Capacity"),
    st.Page("views/experiments.py", title="Experiments"),
    st.Page("views/alerts.py", title="Alerts"),
]

st.set_page_config(page_title="Optimization Engine", layout="wide")
require_login()
st.navigation(PAGES).run()
