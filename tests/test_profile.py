"""pyuncomp profile: per-head entropy, tokens kept and likely retrieval heads, in JSON and a PNG."""

import json
import random

import numpy as np
import pytest

import pyuncomp
from pyuncomp.profile import profile, retrieval_heads, write_profile
from test_cli import pyuncomp as run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def prompt_text(n_items):
    """A haystack of numbered facts with a passkey in the middle (about 12 tokens per item)."""
    rng = random.Random(0)
    items = [f"Item {i}: the {rng.choice(['red', 'blue', 'green'])} box holds {rng.randint(1, 999)} marbles."
             for i in range(n_items)]
    items.insert(n_items // 2, "The secret passkey is 48213. Remember it.")
    return " ".join(items) + " What is the secret passkey?"


@pytest.fixture(scope="module")
def cli_profile(smollm2_path, tmp_path_factory):
    """(prompt text, output directory) of one `pyuncomp profile` run, uncomp 0.05 on a ~600-token prompt."""
    root = tmp_path_factory.mktemp("profile")
    text = prompt_text(50)
    (root / "prompt.txt").write_text(text)
    r = run_cli("profile", "--model", smollm2_path, "--prompt-file", str(root / "prompt.txt"),
                "--method", "uncomp", "--ratio", "0.05", "--out", str(root / "out"))
    assert r.returncode == 0, r.stderr
    assert "likely retrieval heads" in r.stdout
    return text, root / "out"


def test_profile_json_equals_the_compression_stats_of_the_same_run(smollm2_path, cli_profile):
    text, out = cli_profile
    data = json.loads((out / "profile.json").read_text())
    llm = pyuncomp.Llama(smollm2_path, n_ctx=4096, method="uncomp", ratio=0.05, verbose=False)
    llm.eval(llm.tokenize(text.encode()))
    stats = llm.compression_stats()
    llm.close()
    assert data["entropy_source"] == "compression"
    for key in ("method", "ratio", "n_tokens", "kv_bytes", "kv_bytes_full", "layers", "tokens_kept"):
        assert data[key] == stats[key], key
    np.testing.assert_allclose(data["entropy"], stats["entropy"], atol=1e-5, rtol=0)
    kept = np.array(stats["tokens_kept"])
    np.testing.assert_allclose(data["budget_fraction"], kept / stats["n_tokens"])
    assert kept.min() < kept.max()  # uncomp's budgets differ between heads: the comparison is not trivial


def test_profile_has_a_row_per_layer_and_a_column_per_kv_head(cli_profile):
    _, out = cli_profile
    data = json.loads((out / "profile.json").read_text())
    assert data["layers"] == list(range(30))
    for key in ("entropy", "tokens_kept", "budget_fraction", "likely_retrieval_head"):
        assert np.array(data[key]).shape == (30, 3), key
    assert data["likely_retrieval_head"] == retrieval_heads(data["entropy"], data["tokens_kept"])
    assert (out / "profile.png").read_bytes()[:8] == PNG_MAGIC


def test_retrieval_heads_are_low_entropy_heads_with_budgets_above_the_mean():
    entropy = [[0.1, 0.9], None, [0.5, 0.2]]  # the middle layer is not compressed: it counts for neither
    kept = [[10, 5], [1000, 1000], [5, 5]]
    # the two lowest-entropy of four heads are (0, 0) and (2, 1); only (0, 0) keeps more than the mean, 6.25
    assert retrieval_heads(entropy, kept, fraction=0.5) == [[True, False], [False, False], [False, False]]
    assert retrieval_heads(entropy, kept, fraction=0.25) == [[True, False], [False, False], [False, False]]
    assert retrieval_heads([[0.1, 0.9], None, [0.5, 0.2]], [[5, 5], [1, 1], [5, 5]]) == [[False] * 2] * 3


def test_a_method_without_entropy_is_profiled_with_entropy_profile(smollm2_path, tmp_path):
    llm = pyuncomp.Llama(smollm2_path, n_ctx=1024, method="snapkv", ratio=0.1, verbose=False)
    llm.eval(llm.tokenize(prompt_text(25).encode()))
    data = profile(llm, k=16)
    expected = llm.entropy_profile(16)
    assert expected != llm.entropy_profile(32)  # k reaches the entropy
    llm.close()
    assert data["entropy_source"] == "entropy_profile(k=16)"
    np.testing.assert_allclose(data["entropy"], expected, atol=1e-6)
    # snapkv gives every head the same budget: none is above the mean, so none is marked
    assert len({t for kept in data["tokens_kept"] for t in kept}) == 1
    assert not any(map(any, data["likely_retrieval_head"]))
    write_profile(data, tmp_path / "snapkv")
    assert json.loads((tmp_path / "snapkv" / "profile.json").read_text()) == data
    assert (tmp_path / "snapkv" / "profile.png").read_bytes()[:8] == PNG_MAGIC
