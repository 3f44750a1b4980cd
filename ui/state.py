"""What the user is working on, kept where a refresh or a restart finds it again.

The current dataset lives in the URL (``?dataset=NAME``) and in the workspace's ``state.json``;
loaded datasets are cached by file content (path, size, mtime), so reruns do not read them again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import streamlit as st

from engine import datasets, io, runs, workspace
from engine.errors import ScwbError


def _state_file() -> Path:
    return workspace.home() / "state.json"


def current_dataset() -> str | None:
    name = (
        st.query_params.get("dataset")
        or st.session_state.get("dataset")
        or (runs.read_json(_state_file(), {}) or {}).get("dataset")
    )
    if name and datasets.path(name).exists():
        return name
    return None


def set_dataset(name: str) -> None:
    st.session_state["dataset"] = name
    st.query_params["dataset"] = name
    runs.write_json(_state_file(), {**(runs.read_json(_state_file(), {}) or {}), "dataset": name})


def _key(name: str) -> tuple[str, int, float]:
    p = datasets.path(name)
    s = p.stat()
    return str(p), s.st_size, s.st_mtime


@st.cache_resource(max_entries=4, show_spinner="Loading dataset...")
def _load(path: str, size: int, mtime: float) -> ad.AnnData:
    return io.read(path)


@st.cache_data(max_entries=16, show_spinner=False)
def _describe(path: str, size: int, mtime: float) -> dict[str, Any]:
    return io.describe(_load(path, size, mtime))


def load_current() -> tuple[str | None, ad.AnnData | None, dict[str, Any] | None]:
    """The current dataset (shared, read-only: copy before changing it) and its description."""
    name = current_dataset()
    if not name:
        return None, None, None
    try:
        key = _key(name)
        return name, _load(*key), _describe(*key)
    except ScwbError as exc:
        st.error(str(exc))
        return None, None, None


def dataset_picker(
    label: str = "Dataset",
    empty_hint: str = "No dataset yet: open **Data** to upload a file or pick a demo.",
) -> tuple[str | None, ad.AnnData | None, dict[str, Any] | None]:
    """A selectbox of workspace datasets bound to the current dataset."""
    names = [d["name"] for d in datasets.list_datasets()]
    if not names:
        st.info(empty_hint)
        return None, None, None
    cur = current_dataset()
    choice = st.selectbox(label, names, index=names.index(cur) if cur in names else 0)
    if choice != cur:
        set_dataset(choice)
    return load_current()


def show_error(exc: Exception) -> None:
    """Engine errors as one readable line; anything else as a short message, never a traceback."""
    if isinstance(exc, ScwbError):
        st.error(str(exc))
    else:
        first = str(exc).splitlines()[0] if str(exc) else ""
        st.error(f"Unexpected {type(exc).__name__}: {first}")


def ensure_app_navigation() -> None:
    """Route a page URL opened first after a server start through ``app.py``.

    With a ``pages/`` folder, Streamlit runs the first session's page in its legacy mode (no
    ``app.py``: no sidebar, no page list) until some session has called ``st.navigation``. A
    refresh on /runs after a restart would land there; this switches that session to ``app.py``.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory and not st.session_state.get("_app_navigation"):
        st.session_state["_app_navigation"] = (
            True  # once per session: never loop, never eat a click
        )
        PagesManager.uses_pages_directory = False
        st.rerun()
