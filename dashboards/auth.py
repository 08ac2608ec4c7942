"""The dashboard's login: the same rule as the gateway's admin API. A password
(``OPTENGINE_DASHBOARD_PASSWORD``) or else the admin API key opens it; with neither
it is open in development and off wherever auth is required (prod, or API keys set)."""

from __future__ import annotations

import hmac

import streamlit as st

from services.settings import load_settings

_KEY = "authenticated"


def secret() -> str:
    settings = load_settings()
    return settings.dashboard_password.get_secret_value() or settings.admin_api_key


def require_login() -> None:
    """Stop the page unless this browser session has logged in (or no login is set)."""
    expected = secret()
    if not expected:
        if load_settings().auth_required:
            st.error("The dashboard is off: set OPTENGINE_DASHBOARD_PASSWORD (or "
                     "OPTENGINE_ADMIN_API_KEY) to open it with a password.")
            st.stop()
        return
    if st.session_state.get(_KEY) == _fingerprint(expected):
        return
    st.title("Optimization Engine")
    with st.form("login"):
        given = st.text_input("Password or admin API key", type="password", key="password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        if hmac.compare_digest(given.encode(), expected.encode()):
            st.session_state[_KEY] = _fingerprint(expected)
            st.rerun()
        st.error("Wrong password or admin API key.")
    st.stop()


def _fingerprint(value: str) -> str:
    """What the session keeps: a changed password logs every session out."""
    return hmac.new(value.encode(), b"optengine-dashboard", "sha256").hexdigest()
