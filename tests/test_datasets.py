"""engine.datasets: the workspace's dataset keys."""


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
