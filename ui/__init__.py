"""Streamlit helpers shared by the pages: state, cached loading, sidebar and figures."""
