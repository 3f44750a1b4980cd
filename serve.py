"""Serve the app: ``streamlit run serve.py`` (what ``make run`` does).

It mounts ``app.py`` as a Streamlit ``st.App`` with one route of our own beside Streamlit's:
uploads that stream to disk (``ui/uploads.py``), so a 2 GB file does not pass through the app's
memory. ``streamlit run app.py`` still serves the same app with Streamlit's in-memory uploader.
"""

import streamlit as st

from ui.uploads import routes

app = st.App("app.py", routes=routes())
