"""The sidebar's page list: links that carry this tab's dataset in their address.

Streamlit's own list leads to a bare /train; putting the tab's dataset back in the address
there was a second history entry, so Back needed two presses after each page change (a browser
pass). These links carry it, and follow a dataset the page picks later in the same run.
"""

from __future__ import annotations

from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

SLOT = "_page_list"  # session state: (this run's cursors, the slot, the pages)


def draw(pages: list) -> None:
    """The page list at the top of the sidebar, remembered for this run (``follow``)."""
    slot = st.sidebar.empty()
    ctx = get_script_run_ctx()
    st.session_state[SLOT] = (ctx.cursors if ctx else None, slot, pages)
    _fill(slot, pages)


def follow() -> None:
    """Redraw this run's page list for the tab's dataset (a page picked it after the list was
    drawn). The slot of an earlier run is never written to: its place is another run's."""
    held: Any = st.session_state.get(SLOT)
    ctx = get_script_run_ctx()
    if held and ctx is not None and held[0] is ctx.cursors:
        _fill(held[1], held[2])


def _fill(slot: Any, pages: list) -> None:
    # the tab's dataset, as every in-app link carries it, and the choices the page keeps in
    # its address (a link without them read as an address changed by Back: ui.state)
    from ui.state import address, page_params

    with slot.container():
        for page in pages:
            st.page_link(
                page,
                label=page.title,
                icon=page.icon or None,
                query_params=address(**page_params(page.url_path)),
                width="stretch",
            )
