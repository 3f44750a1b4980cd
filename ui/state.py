"""What the user is working on, per browser session, and safe rendering of user strings.

The current dataset is a dataset **key** (``engine.datasets``) kept in the session
(``st.session_state``) and in the URL (``?dataset=KEY``, so a refresh keeps it). Each tab is its
own session: one tab's choice never changes another's. The workspace's ``state.json`` remembers
the last choice only to seed a brand-new session. Loaded datasets are cached by file content
(path, size, mtime), so reruns do not read them again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anndata as ad
import streamlit as st

from engine import datasets, io, runs, summary, workspace
from engine.errors import ScwbError

_MD_SPECIAL = re.compile(r"([\\`*~$|{}\[\]()!<>#])")
_LOOSE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# text-direction controls: a name holding them would display reversed (U+202E makes "ü5head.csv")
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def md(text: Any) -> str:
    """``text`` made inert for ``st.markdown``/``st.error``/``st.caption``/button labels: one
    line, every markdown special (``\\ ` * ~ $ | { } [ ] ( ) ! < > #``, an emphasis ``_``, a
    leading list or quote marker) escaped, so a user's name never becomes a link, an image,
    bold text, LaTeX or HTML; text-direction controls are dropped, so it reads as stored."""
    s = " ".join(_BIDI.sub("", str(text)).split())
    s = _MD_SPECIAL.sub(r"\\\1", s)
    s = _LOOSE_UNDERSCORE.sub(r"\\_", s)
    s = re.sub(r"^([-+=])", r"\\\1", s)  # a list item or a heading underline
    s = re.sub(r"^(\d+)([.)])", r"\1\\\2", s)  # an ordered list item
    s = re.sub(r"://", r"\\://", s)  # no bare-URL autolinks
    s = re.sub(r"(?i)\b(www)\.", r"\1\\.", s)
    return s


def _state_file() -> Path:
    return workspace.home() / "state.json"


def current_dataset() -> str | None:
    """This session's dataset key: the URL, then the session, then (only for a session that
    has just started) the workspace's last choice."""
    if "_dataset_seeded" not in st.session_state:
        st.session_state["_dataset_seeded"] = True
        if not st.query_params.get("dataset") and not st.session_state.get("dataset"):
            seed = (runs.read_json(_state_file(), {}) or {}).get("dataset")
            if seed and datasets.exists(seed):
                st.session_state["dataset"] = seed
    for key in (st.query_params.get("dataset"), st.session_state.get("dataset")):
        if key and datasets.exists(key):
            if st.session_state.get("dataset") != key:
                st.session_state["dataset"] = key
            return key
    return None


def address(**params: Any) -> dict[str, Any]:
    """The query parameters of a link to another page: ``params`` and this tab's dataset. A
    link without the dataset led to a bare address, and putting the dataset back there was a
    second history entry (Back needed two presses: a browser pass)."""
    key = current_dataset()
    return {"dataset": key, **params} if key else dict(params)


def dataset_to_address() -> None:
    """Put this session's dataset back in the address when a page link dropped it: a link in
    the sidebar leads to a bare /train, and a refresh there took the dataset another tab had
    picked last (the workspace's seed), not this tab's own (a browser pass)."""
    key = current_dataset()
    if key and st.query_params.get("dataset") != key:
        st.query_params["dataset"] = key


def set_dataset(key: str) -> None:
    """Make ``key`` this session's dataset (and the seed of the next new session)."""
    st.session_state["dataset"] = key
    st.session_state["_dataset_seeded"] = True
    st.query_params["dataset"] = key
    from ui import page_list  # the sidebar's links, drawn before the page, follow it

    page_list.follow()
    with contextlib.suppress(OSError):  # only a seed for new sessions: never break the page
        runs.write_json(
            _state_file(), {**(runs.read_json(_state_file(), {}) or {}), "dataset": key}
        )


def dataset_file(name: str) -> tuple[str, int, float]:
    """Dataset ``name``'s file as (path, size, mtime): the key of every cache of its content.
    The file is the one saved (``datasets.fingerprint``) before anything here reads it."""
    # instant when its record matches; else (a dataset saved by an older version, a file
    # changed on disk) read once in a child first, said after half a second
    with st.spinner("Checking the dataset's file (once)..."):
        datasets.fingerprint(name)
    p = datasets.path(name)
    s = p.stat()
    return str(p), s.st_size, s.st_mtime


@st.cache_resource(max_entries=4, show_spinner="Loading dataset...")
def _load(path: str, size: int, mtime: float) -> ad.AnnData:
    return io.read(path)


@st.cache_data(max_entries=16, show_spinner=False)
def _describe(path: str, size: int, mtime: float) -> dict[str, Any]:
    """The description stored when the dataset was saved; computed for older datasets."""
    stored = datasets.description(Path(path).stem)
    return stored if stored is not None else io.describe(_load(path, size, mtime))


@st.cache_resource(max_entries=4, show_spinner=False)
def _annotations(path: str, size: int, mtime: float) -> ad.AnnData:
    return summary.annotations(path)


class DatasetKey(str):
    """A dataset key (its ``str`` value: use it for ``datasets.path``, ``load``, run specs) that
    formats as its label in f-strings (``f"{key}_pp"`` -> ``"my data_pp"``), so pages that name
    things after the dataset keep the user's name. ``.key`` and ``.label`` say which is which."""

    label: str

    def __new__(cls, key: str, label: str | None = None) -> DatasetKey:
        obj = super().__new__(cls, key)
        obj.label = label if label is not None else datasets.label(key)
        return obj

    @property
    def key(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return format(self.label, spec)


def load_current(
    full: bool = True,
) -> tuple[str | None, ad.AnnData | None, dict[str, Any] | None]:
    """The current dataset's key (a ``DatasetKey``), data (shared, read-only: copy before
    changing it) and description. ``full=False`` gives the annotations alone (``X`` is None),
    which is all a page that only displays needs at a million cells."""
    key = current_dataset()
    if not key:
        return None, None, None
    try:
        k = dataset_file(key)
        return DatasetKey(key), (_load(*k) if full else _annotations(*k)), _describe(*k)
    except (ScwbError, OSError) as exc:
        show_error(exc)
        return None, None, None


def dataset_label(row: dict[str, Any], same_name: int = 1) -> str:
    """How a dataset is shown in pickers: its name, with its key when names repeat."""
    name = str(row.get("name") or row.get("key"))
    return f"{name} ({row['key']})" if same_name > 1 else name


def dataset_picker(
    label: str = "Dataset",
    empty_hint: str = "No dataset yet: open **Data** to upload a file or pick a demo.",
    full: bool = True,
) -> tuple[str | None, ad.AnnData | None, dict[str, Any] | None]:
    """A selectbox of workspace datasets bound to this session's current dataset; returns
    (key, data, description)."""
    rows = datasets.list_datasets()
    if not rows:
        st.info(empty_hint)
        return None, None, None
    keys = [r["key"] for r in rows]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["name"]] = counts.get(r["name"], 0) + 1
    shown = {r["key"]: dataset_label(r, counts[r["name"]]) for r in rows}
    gone = deleted_dataset()
    cur = current_dataset()
    note = st.empty()
    choice = st.selectbox(
        label,
        keys,
        index=None if gone else keys.index(cur) if cur in keys else 0,
        format_func=lambda k: shown.get(k, k),
        placeholder="Pick a dataset",
    )
    if choice is None:
        # another tab (or the command line) deleted this tab's dataset: said, and nothing is
        # picked for the user (the newest dataset was taken in silence, and a Submit pressed
        # on the old form trained on it: a browser pass)
        note.warning(
            md(
                f"The dataset this tab was on ({gone}) was deleted, in another tab or from "
                "the command line. Pick a dataset to go on."
            )
        )
        return None, None, None
    if choice != cur:
        set_dataset(choice)
    return load_current(full)


def deleted_dataset() -> str | None:
    """The key of this tab's dataset (its address, else its session) when it no longer
    exists in the workspace."""
    asked = st.query_params.get("dataset") or st.session_state.get("dataset")
    return asked if asked and not datasets.exists(asked) else None


@st.cache_data(max_entries=16, show_spinner=False)
def _layout(path: str, size: int, mtime: float):
    return summary.layout(path)


def dataset_layout(key: str):
    """Shape, stored entries and sizes of dataset ``key`` from its file's metadata (cached)."""
    return _layout(*dataset_file(key))


def load_full(key: str) -> ad.AnnData:
    """Dataset ``key`` with its matrices, from the shared cache."""
    return _load(*dataset_file(key))


def ask_first(key: str, subject: str) -> None:
    """Ask ``confirmed(key, subject, ...)``'s question on the next draw (a destructive button
    clicked: one click deleted a run or a dataset at once)."""
    st.session_state[key] = subject


def confirmed(key: str, subject: str, question: Callable[[], str], scope: str = "app") -> bool:
    """The question ``ask_first`` asked about ``subject``, with "Yes, delete" and "Keep it";
    True once "Yes" is clicked. A question about another subject (another run or dataset
    picked since) is forgotten. ``question`` is made only when asked (it may read the
    workspace); ``scope``: "fragment" inside a fragment."""
    ss = st.session_state
    if ss.get(key) not in (None, subject):
        del ss[key]
    if ss.get(key) != subject:
        return False
    box = st.container(border=True)
    box.warning(question())
    yes, no, _ = box.columns([1, 1, 4])
    if no.button("Keep it", key=f"{key}-no"):
        ss.pop(key, None)
        st.rerun(scope=scope)
    if yes.button("Yes, delete", type="primary", key=f"{key}-yes"):
        ss.pop(key, None)
        return True
    return False


def _page() -> str:
    return str(st.session_state.get("_page", ""))


def from_address(key: str, wkey: str, options: list, default: Any, many: bool = False) -> None:
    """Set widget ``wkey`` from the address when the address changed from outside the page
    since it last ran (Back, Forward, a link, a refresh): the page then shows what that
    address says. Before, the page kept this session's choice and wrote it back to the
    address, a new history entry: Back to 'classify' came back as 'reconstruct', and the next
    press of Back stayed where it was (a browser pass). Call before the widget is drawn, and
    ``to_address`` after it."""
    ss = st.session_state
    if many:
        asked: Any = [v for v in st.query_params.get_all(key) if v in options] or None
    else:
        asked = st.query_params.get(key)
        asked = asked if asked in options else None
    seen = f"_seen:{_page()}:{key}"
    if seen in ss and asked != ss[seen]:
        ss[wkey] = asked if asked is not None else default
    elif wkey not in ss and asked is not None:
        ss[wkey] = asked
    ss[seen] = asked


def page_params(url_path: str) -> dict[str, Any]:
    """The choices a page keeps in its address (``to_address``), for a link to it: a link
    without them (the sidebar's) would read as an address that changed (``from_address``)."""
    return dict(st.session_state.get(f"_link:{url_path}", {}))


def to_address(key: str, value: Any, default: Any) -> None:
    """Keep a page's choice in the address (``?key=value``; a list as repeated keys), so that a
    browser refresh keeps it. The default is not written while the address has none: each
    write is one more press of Back."""
    asked = st.query_params.get_all(key) if isinstance(value, list) else st.query_params.get(key)
    if value != asked and (asked not in (None, []) or value != default):
        st.query_params[key] = value
        asked = value
    ss = st.session_state
    ss[f"_seen:{_page()}:{key}"] = asked if asked not in ([], "") else None
    links = ss.setdefault(f"_link:{_page()}", {})
    before = dict(links)
    if asked in (None, []):
        links.pop(key, None)
    else:
        links[key] = asked
    if links != before:  # the sidebar's links, drawn before the page, follow it
        from ui import page_list

        page_list.follow()


def show_error(exc: BaseException) -> None:
    """Engine errors as one readable, escaped line; anything else as a short message, never a
    traceback."""
    if isinstance(exc, ScwbError):
        st.error(md(str(exc)))
    else:
        first = str(exc).splitlines()[0] if str(exc) else ""
        st.error(md(f"Unexpected {type(exc).__name__}: {first}"))


@contextlib.contextmanager
def net(what: str, note: str | None = None) -> Iterator[None]:
    """The last net under a page, the sidebar and each fragment's own reruns (those run
    outside the page's net): an error nothing caught is one line (and ``note``), and the
    server's log has its traceback. ``SCWB_PAGE_ERRORS=raise`` (the tests): raised as it is.
    st.stop and st.rerun are BaseExceptions and pass through."""
    try:
        yield
    except Exception as exc:
        if os.environ.get("SCWB_PAGE_ERRORS") == "raise":
            raise
        logging.getLogger("scworkbench").exception("%s failed", what)
        show_error(exc)
        if note:
            st.caption(note)


def fragment(run_every: float | None = None) -> Callable[[Callable], Callable]:
    """``st.fragment`` with ``net`` under its body: a run file that breaks one poll is one
    line in the fragment, not Streamlit's error box every few seconds."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            with net(f"the fragment {fn.__name__}"):
                return fn(*args, **kwargs)

        return st.fragment(run_every=run_every)(body)

    return wrap


def keep(key: str, value: Any) -> Any:
    """Keep ``value`` for this session under ``key`` (``kept`` gives it back to a widget)."""
    st.session_state[f"keep:{key}"] = value
    return value


def kept(wkey: str) -> str:
    """``wkey``, a widget key, given back the value this session last kept for it: Streamlit
    drops a widget's value when its page is left (a browser pass: 3 seeds, a hidden size and a
    VAE's batch key came back as the defaults); ``keep(wkey, value)`` after the widget."""
    ss = st.session_state
    if wkey not in ss and f"keep:{wkey}" in ss:
        ss[wkey] = ss[f"keep:{wkey}"]
    return wkey


FORMS_KEPT = 100  # scopes (datasets) whose form is kept on disk; the oldest go first


def _forms_file() -> Path:
    return workspace.home() / "forms.json"


def _form_value(v: Any) -> bool:
    """A value a widget can take back: plain JSON scalars, or a list of texts (multiselect)."""
    if isinstance(v, list):
        return len(v) <= 10_000 and all(isinstance(x, str) for x in v)
    return isinstance(v, bool | int | float | str) and not (isinstance(v, str) and len(v) > 10_000)


def restore_form(scope: str, kinds: dict[str, type] | Callable[[str, Any], Any | None]) -> None:
    """Give a new session (a refresh) the form values of ``scope`` last saved by ``save_form``:
    a refresh on Preprocess put every step back to its suggestion, and a running preview of
    the steps set before could no longer be matched (a browser pass). Once per session and
    scope; a value this session kept already wins. ``kinds``: each widget's name (its key
    before '@') and the type its value has, or a function giving the value to restore for a
    (widget key, saved value), None to leave the widget as it is; anything else in the file is
    ignored (a text for a checkbox broke the page for good: a review)."""
    ss, seen = st.session_state, f"_form_restored:{scope}"
    if seen in ss:
        return
    ss[seen] = True
    values = runs.read_json(_forms_file(), {}).get(scope)  # {} unless a readable JSON object
    if not isinstance(values, dict):
        return
    check = kinds if callable(kinds) else functools.partial(_of_kind, kinds)
    for wkey, value in values.items():
        value = check(str(wkey), value) if _form_value(value) else None
        if value is not None and f"keep:{wkey}" not in ss:
            keep(str(wkey), value)


def _of_kind(kinds: dict[str, type], wkey: str, value: Any) -> Any | None:
    """``value`` if it has the type ``kinds`` lists for ``wkey``'s widget (an int for a float)."""
    kind = kinds.get(wkey.split("@")[0])
    if kind is float and type(value) is int:
        value = float(value)
    return value if kind is not None and type(value) is kind else None


def save_form(scope: str, values: dict[str, Any]) -> None:
    """Keep ``values`` (widget key -> value) of ``scope`` on disk for ``restore_form``; written
    only when they changed, and never breaking the page (a read-only workspace keeps nothing)."""
    values = {k: v for k, v in values.items() if _form_value(v)}
    ss, last = st.session_state, f"_form_saved:{scope}"
    if ss.get(last) == values:
        return
    ss[last] = values
    with contextlib.suppress(OSError, TypeError, ValueError):
        forms = {k: v for k, v in runs.read_json(_forms_file(), {}).items() if k != scope}
        forms[scope] = values  # the newest last: the oldest scopes are dropped first
        runs.write_json(_forms_file(), dict(list(forms.items())[-FORMS_KEPT:]))


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
