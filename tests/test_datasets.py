"""engine.datasets: the workspace's dataset keys."""

import json


def test_keys_keep_a_readable_name_cut_between_words():
    """A saved name was cut at 24 characters: "mb_clustered_cp10k_hvg300" became
    "mb_clustered_cp10k_hvg30-<hash>", which reads as 30 genes."""
    from engine.datasets import SLUG_MAX, check_key, slug

    assert slug("mb_clustered_cp10k_hvg300") == "mb_clustered_cp10k_hvg300"
    assert slug("mouse_brain_10k_counts_pp.h5ad") == "mouse_brain_10k_counts_pp"
    long = "kang_pbmc_stimulated_and_control_logcpm_hvg2000_zscore_seed0_final"
    cut = slug(long)
    assert len(cut) <= SLUG_MAX and long.startswith(cut) and long[len(cut)] == "_"
    assert slug("x" * 100) == "x" * SLUG_MAX  # one word: cut where it must be
    assert check_key(f"{slug(long)}-0123abcd")  # a key the workspace accepts


def test_a_dataset_saved_under_the_old_short_key_is_found_again(lognorm_adata, workspace):
    """Keys kept 24 characters of the name before: saving the same content under the same
    long name again gave a second copy under the new, longer key (a review of the change)."""
    from engine import datasets

    name = "pbmc_stimulated_counts_hvg2000_filtered"
    key = datasets.save(lognorm_adata, name)
    short = f"{name[:24]}-{key.rsplit('-', 1)[1]}"  # as the older version named it
    folder = datasets.path(key).parent
    for ext in (".h5ad", ".json"):
        (folder / f"{key}{ext}").rename(folder / f"{short}{ext}")
    meta = json.loads((folder / f"{short}.json").read_text())
    (folder / f"{short}.json").write_text(json.dumps({**meta, "key": short}))
    assert datasets.save(lognorm_adata, name) == short
    assert [r["key"] for r in datasets.list_datasets()] == [short]


def test_a_very_long_name_is_kept_as_a_label_of_at_most_max_label_characters(lognorm_adata):
    """A hostile pass: a 5,000-character "Save as" name was stored whole and filled the Runs
    and Results headers screens deep, and every row of `engine runs`."""
    from engine import datasets

    key = datasets.save(lognorm_adata, "N" * 5000 + "\nsecond line", source="test")
    label = datasets.label(key)
    assert len(label) == datasets.MAX_LABEL and label.endswith("…") and "\n" not in label
    assert [r["name"] for r in datasets.list_datasets()] == [label]
    assert datasets.label(datasets.save(lognorm_adata, "short name", source="t")) == "short name"


def test_names_that_read_the_same_are_one_name(lognorm_adata):
    """'Café' typed composed and decomposed, or with a zero-width space or a byte-order mark,
    were two labels a person could not tell apart: stored in one spelling (NFC, no invisible
    format characters; the joiners that some scripts need are kept)."""
    import unicodedata

    from engine import datasets

    composed = unicodedata.normalize("NFC", "Café")
    key = datasets.save(lognorm_adata, composed, source="t")
    for same in (unicodedata.normalize("NFD", "Café"), "Caf\u200bé", "\ufeffCafé"):
        assert same != composed and datasets.name_taken(same) == key
    assert datasets.label(datasets.save(lognorm_adata[:50], "Caf\u0065\u0301 2")) == "Café 2"
    assert datasets.label(key) == composed
    assert datasets.label(datasets.save(lognorm_adata[:40], "می\u200cخواهم")) == "می\u200cخواهم"
