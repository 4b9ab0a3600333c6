import pytest

import pyuncomp


@pytest.fixture(scope="session")
def smollm2_path():
    return str(pyuncomp.resolve_model("smollm2-135m"))


@pytest.fixture(scope="session")
def gemma3_path():
    return str(pyuncomp.resolve_model("gemma3-270m"))


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    from parity_cases import N_CTX

    llm = pyuncomp.Llama(smollm2_path, n_ctx=N_CTX, seed=0, verbose=False)
    yield llm
    llm.close()
