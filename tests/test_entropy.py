"""Native truncated matrix entropy against a numpy reference of ../shared/uncomp-spec.md section 1."""

import numpy as np
import pytest

import pyuncomp


def truncated_entropy(x: np.ndarray, k: int) -> float:
    x = x.astype(np.float64)
    z = x - x.mean(axis=0)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    z = z[norms[:, 0] > 0] / norms[norms[:, 0] > 0]
    a = z.T @ z / len(x)
    a = a / np.trace(a) + 1e-10 * np.eye(a.shape[0])
    sigma = np.sort(np.linalg.eigvalsh(a))[::-1][:k]
    sigma = np.clip(sigma, 0, None)
    return float(-(sigma * np.log(sigma + 1e-10)).sum() / np.log(a.shape[0]))


@pytest.fixture(scope="module")
def evaluated(smollm2_path):
    llm = pyuncomp.Llama(smollm2_path, n_ctx=1024, verbose=False)
    text = ("In the beginning the Universe was created. This has made a lot of people very angry "
            "and been widely regarded as a bad move. ") * 12
    llm.eval(llm.tokenize(text.encode()))
    yield llm
    llm.close()


@pytest.mark.parametrize("k", [32, 64])
def test_native_entropy_matches_numpy(evaluated, k):
    profile = evaluated.entropy_profile(k=k)
    assert len(profile) == 30 and all(len(heads) == 3 for heads in profile)
    for layer in (0, 7, 15, 29):
        keys = evaluated.cached_keys(layer)
        assert keys.shape == (evaluated.n_tokens, 3 * 64)
        for h in range(3):
            ref = truncated_entropy(keys[:, h * 64:(h + 1) * 64], k)
            assert abs(profile[layer][h] - ref) < 1e-3, (layer, h, profile[layer][h], ref)


def test_entropy_is_a_fraction_and_varies_across_layers(evaluated):
    flat = np.array(evaluated.entropy_profile(k=64)).ravel()
    assert ((flat > 0) & (flat <= 1.0)).all()
    assert flat.std() > 0.01


def test_cached_keys_of_a_missing_layer_is_a_value_error(evaluated):
    with pytest.raises(ValueError, match="layer: 30"):
        evaluated.cached_keys(30)
