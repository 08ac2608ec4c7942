"""The Streamlit dashboard over the metrics store (``optengine dashboard``).

``data`` holds every query as a plain function (tested without Streamlit); ``common``
the Streamlit glue (read-only engine, sidebar filters, cached loads, "no data yet");
``views/`` one thin page each; ``app.py`` the entry point that lists the pages.
"""
