"""Streamlit glue shared by the pages: the read-only store, the sidebar filters, cached
loads and the "no data yet" notice. Pages call ``start`` then ``load``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import streamlit as st
from sqlalchemy import Engine

from dashboards import control, data
from dashboards.data import Filters, StoreNotReady
from services.settings import load_settings

_SETTINGS = load_settings()


@dataclass(frozen=True)
class View:
    url: str
    filters: Filters


@st.cache_resource(show_spinner=False)
def _engine(url: str) -> Engine:
    return data.read_only_engine(url)


def store_url() -> str:
    settings = load_settings()
    return settings.dashboard_database_url or settings.database_url


def engine_for(url: str) -> Engine:
    return _engine(url)


@st.cache_data(ttl=_SETTINGS.dashboard_cache_ttl_s, show_spinner=False)
def _load(name: str, url: str, time_range: str, tenant: str | None, model: str | None,
          end: datetime | None, sample_rows: int) -> Any:
    filters = Filters(time_range=time_range, tenant=tenant, model=model, end=end,
                      sample_rows=sample_rows)
    reader = getattr(control if name in control.__all__ else data, name)
    return reader(engine_for(url), filters)


def load(name: str, view: View) -> Any:
    """``data.<name>(engine, filters)`` (or ``control.<name>``), cached for
    ``dashboard_cache_ttl_s``; a store that is not ready stops the page with its notice
    instead of a traceback."""
    f = view.filters
    try:
        return _load(name, view.url, f.time_range, f.tenant, f.model, f.end, f.sample_rows)
    except StoreNotReady as exc:
        no_data(exc)


def no_data(exc: StoreNotReady) -> None:
    st.info(f"**No data yet.** {exc.message}")
    st.stop()


def start(title: str) -> View:
    """Title, store check and sidebar filters; stops with the notice when there is
    nothing to show."""
    st.title(title)
    url = store_url()
    try:
        engine = engine_for(url)
        data.check_store(engine)
    except StoreNotReady as exc:
        _engine.clear()  # the store may appear (migrate) before the next run
        no_data(exc)
    settings = load_settings()
    with st.sidebar:
        time_range = st.selectbox("Time range", list(data.TIME_RANGES), index=2,
                                  key="time_range")
        base = Filters(time_range=time_range, sample_rows=settings.dashboard_sample_rows)
        tenants, models = _choices(url, time_range)
        tenant = st.selectbox("Tenant", ["all", *tenants], key="tenant")
        model = st.selectbox("Model served", ["all", *models], key="model")
    return View(url, Filters(time_range=time_range, tenant=None if tenant == "all" else tenant,
                             model=None if model == "all" else model, end=base.end,
                             sample_rows=base.sample_rows))


@st.cache_data(ttl=_SETTINGS.dashboard_cache_ttl_s, show_spinner=False)
def _choices(url: str, time_range: str) -> tuple[list[str], list[str]]:
    return data.filter_choices(engine_for(url), Filters(time_range=time_range))


def usd(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"${value:,.4f}" if abs(value) < 100 else f"${value:,.2f}"


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} ms"


def share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
