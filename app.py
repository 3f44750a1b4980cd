"""scWorkbench: the Streamlit app. Home page, navigation and the sidebar shared by every page.

Run with ``make run``. Every action is an engine call (``engine/``); pages only draw.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine import datasets, jobs
from engine.demos import DEMOS
from ui import page_list, sidebar
from ui.state import address, dataset_to_address, md, net, set_dataset, show_error


def home() -> None:
    st.title("scWorkbench")
    st.markdown(
        "Train and compare deep models on single-cell data without writing code. "
        "Load an `.h5ad` (or a demo), preprocess it, and train classifiers, autoencoders, VAEs or scGen "
        "in the background, on the GPU when there is one. "
        "Inspect reconstructions, embeddings, abnormality scores and predicted perturbation responses, "
        "compare runs on the same split against simple baselines, and take everything home."
    )
    c1, c2 = st.columns(2)
    with c1:
        st.subheader("Start with a demo")
        # the name in the box, what it holds below: a half-width box cut the description off
        demo = st.selectbox("Demo dataset", list(DEMOS))
        st.caption(DEMOS[demo])
        if st.button("Load demo", type="primary"):
            try:
                from engine.demos import load_demo

                set_dataset(datasets.save(load_demo(demo), demo, source=f"demo:{demo}"))
                st.switch_page("pages/data.py", query_params=address())
            except Exception as exc:
                show_error(exc)
    with c2:
        st.subheader("Or bring your own data")
        st.markdown(
            "Upload `.h5ad`, 10x `.h5`, a zipped 10x `.mtx` folder or a `.csv`/`.tsv` matrix on the **Data** page."
        )
        st.page_link(
            "pages/data.py",
            label="Go to Data",
            icon=":material/folder_open:",
            query_params=address(),
        )
    st.divider()
    st.subheader("Where you left off")
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Recent datasets**")
        rows = datasets.list_datasets()[:5]
        if not rows:
            st.caption("None yet.")
        for d in rows:
            if st.button(
                md(f"{d['name']} · {d['n_obs']} x {d['n_vars']} · {d['x_kind']}"),
                key=f"ds-{d['key']}",
                help=f"key {d['key']}",
            ):
                set_dataset(d["key"])
                st.switch_page("pages/data.py", query_params=address())
    with c2:
        st.markdown("**Recent runs**")
        recent = jobs.list_jobs()[:5]
        if not recent:
            st.caption("None yet.")
        for r in recent:
            # each a link (a browser pass: plain text): a finished run to its results, the
            # others to the Runs page, on that run
            done = r["state"] == "completed"
            st.page_link(
                "pages/results.py" if done else "pages/runs.py",
                # the id names the model already; a long dataset name is shortened with an
                # ellipsis (the link was cut at the column's edge), whole in the tooltip
                label=f"{md(r['id'])} · {md(_short(str(r['dataset'])))} · {md(r['state'])}",
                help=f"{md(r['model'])} on {md(r['dataset'])}",
                icon=":material/insights:" if done else ":material/monitoring:",
                query_params=address(run=r["id"]),
            )
        if recent:
            st.page_link(
                "pages/runs.py",
                label="All runs",
                icon=":material/monitoring:",
                query_params=address(),
            )


def _short(text: str, most: int = 24) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


# a local file: a material icon as page icon is fetched from fonts.gstatic.com (fails offline)
st.set_page_config(
    page_title="scWorkbench",
    page_icon=str(Path(__file__).parent / "assets" / "icon.png"),
    layout="wide",
)
st.logo(str(Path(__file__).parent / "assets" / "logo.svg"))
PAGES = [
    st.Page(home, title="Home", icon=":material/home:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/folder_open:"),
    st.Page("pages/explore.py", title="Explore", icon=":material/scatter_plot:"),
    st.Page("pages/preprocess.py", title="Preprocess", icon=":material/tune:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/monitoring:"),
    st.Page("pages/results.py", title="Results", icon=":material/insights:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
]
# the page list is the sidebar's own (``ui.page_list``): its links keep the tab's dataset
nav = st.navigation(PAGES, position="hidden")
# the last net under every page: an error no page caught is one line, the traceback goes to
# the server's log (a hand-edited run file gave Streamlit's redacted error box, and one read by
# the sidebar gave it on every page: a hostile-input pass)
with net("the address"):
    dataset_to_address()
with net("the page list"):
    page_list.draw(PAGES)
with st.sidebar, net("the sidebar"):
    sidebar.draw()
st.session_state["_page"] = nav.url_path  # the page whose choices the address holds
with net(
    f"the page {nav.title}",
    "The page stopped here; what is saved is unchanged. The server's log has the details.",
):
    nav.run()
