"""Fuzzes pyuncomp's native C API and budget computation (atheris, libFuzzer's engine for Python).

    python tests/fuzz/fuzz_api.py tests/fuzz/corpus -max_total_time=600   # fuzz; new inputs join the corpus
    python tests/fuzz/fuzz_api.py --replay tests/fuzz/corpus              # run every corpus input once

Each input drives one of:
- the parameter struct: raw field values (NaN, infinities, negatives, INT32 extremes) through
  llama_uncomp_params_check, llama_uncomp_set_params on a live context and CompressionConfig; a struct the
  check accepts then compresses a real prompt;
- per-head budgets: an array of any length and values through llama_uncomp_compress_budgets on a real
  prompt (SmolLM2, restored from a saved state each time), then one decoded token;
- the budget split: policy weights from arbitrary entropies, and fit_budgets with arbitrary weights, mean
  and bounds.
Every outcome must be a clean refusal (a negative error code, ValueError) or a result whose invariants hold
(tokens kept per head = clamp(budget, window + n_sink, held), budgets in their bounds with the asked sum,
finite logits). Run with the ASan build (tests/test_native.py shows how) to catch invalid accesses too.
"""

import collections
import inspect
import json
import math
import os
import sys

import atheris
import numpy as np

import pyuncomp
from pyuncomp import config, policies
from pyuncomp._native import ffi, lib
from pyuncomp.config import CompressionConfig
from pyuncomp.policies import LayerInfo, fit_budgets, make_policy


def instrument(module):
    """Coverage feedback from a module's functions and methods. Only the parameter and budget modules:
    atheris's comparison hooks on pyuncomp.llama's state handling held on to memory (~20 MB a state
    load), and the native library is not instrumented (gcc has no libFuzzer coverage)."""
    for obj in vars(module).values():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        functions = [obj] if inspect.isfunction(obj) else vars(obj).values() if inspect.isclass(obj) else []
        for fn in functions:
            if inspect.isfunction(fn):
                atheris.instrument_func(fn)


instrument(config)
instrument(policies)

INT32 = (-2**31, 2**31 - 1)
PROMPT = ("The grass is green. The sky is blue. The pass key is 4711. Remember it. "
          "The sun is yellow. Here we go. There and back again. What is the pass key? The pass key is")
WINDOW = 4


class Target:
    """One SmolLM2 context with an observed, uncompressed prompt saved as a state."""

    def __init__(self):
        self.llm = pyuncomp.Llama(str(pyuncomp.resolve_model(None)), n_ctx=256, method="snapkv", ratio=0.5,
                                  window=WINDOW, auto_compress=False, shrink_cache=False, seed=0, verbose=False)
        self.llm.eval(self.llm.tokenize(PROMPT.encode()))
        self.state = self.llm.save_state()
        self.stats = self.llm._layer_stats(0)
        self.n_heads = sum(s["n_head_kv"] for s in self.stats)
        self.n_tokens = self.llm.n_tokens
        self.config = self.llm.compression

    def restore(self):
        self.llm.set_compression(**self.config.as_dict())
        self.llm.load_state(self.state)

    def check_kept(self, budgets, window, n_sink):
        """Each KV head keeps clamp(budget, window + n_sink, tokens) tokens; one more token decodes."""
        kept = np.concatenate([self.llm._tokens_kept(s["il"], s["n_head_kv"], 0) for s in self.stats])
        want = np.clip(budgets, min(window + n_sink, self.n_tokens), self.n_tokens)
        assert np.array_equal(kept, want), (kept, want)
        self.llm.eval([self.llm.token_eos()])
        assert np.all(np.isfinite(self.llm._last_logits())), "non-finite logits after compression"


target = None


def fuzz_params(fdp):
    p = ffi.new("struct llama_uncomp_params *")
    p.method = fdp.ConsumeIntInRange(-2, lib.LLAMA_UNCOMP_METHOD_COUNT + 1)
    p.ratio = fdp.ConsumeProbability() if fdp.ConsumeBool() else fdp.ConsumeFloat()
    for field in ("budget", "window", "pool_kernel", "n_sink", "n_head_groups"):
        small = fdp.ConsumeBool()
        setattr(p, field, fdp.ConsumeIntInRange(-2, 300) if small else fdp.ConsumeIntInRange(*INT32))
    message = lib.llama_uncomp_params_check(p)
    target.restore()
    ctx = target.llm._ctx_ptr()
    code = lib.llama_uncomp_set_params(ctx, p)
    if message != ffi.NULL:
        text = ffi.string(message).decode()
        assert code == lib.LLAMA_UNCOMP_ERR_PARAMS, (text, code)
        assert text.split(":", 1)[0] in ("method", "ratio", "budget", "window", "pool_kernel", "n_sink",
                                         "n_head_groups"), text
        return "params refused"
    assert code == 0, code
    try:  # the Python config agrees with the native check on a valid struct
        CompressionConfig(method=ffi.string(lib.llama_uncomp_method_name(p.method)).decode(), ratio=p.ratio,
                          budget=p.budget or None, window=p.window, pool_kernel=p.pool_kernel, n_sink=p.n_sink,
                          n_head_groups=p.n_head_groups)
    except ValueError as e:
        raise AssertionError(f"CompressionConfig refused a struct the native check accepts: {e}")
    if p.method == lib.LLAMA_UNCOMP_METHOD_FULL:
        assert lib.llama_uncomp_compress(ctx, 0) == lib.LLAMA_UNCOMP_ERR_METHOD
        return "params: full refused"
    code = lib.llama_uncomp_compress(ctx, 0)
    if code == lib.LLAMA_UNCOMP_ERR_NO_QUERIES:  # a scoring method with a larger window than observed
        assert p.window > WINDOW and p.method != lib.LLAMA_UNCOMP_METHOD_STREAMINGLLM, (p.window, p.method)
        return "params: window not observed"
    assert code >= 0, code
    budget = p.budget if p.budget > 0 else math.floor(p.ratio * target.n_tokens + 0.5)
    target.check_kept(np.full(target.n_heads, budget), p.window, p.n_sink)
    return "params: compressed"


def fuzz_budgets(fdp):
    n = fdp.ConsumeIntInRange(0, target.n_heads + 2) if fdp.ConsumeBool() else target.n_heads
    budgets = np.array(fdp.ConsumeIntListInRange(n, -3, 2 * target.n_tokens) if fdp.ConsumeBool()
                       else fdp.ConsumeIntListInRange(n, *INT32), dtype=np.int32)
    target.restore()
    ptr = ffi.NULL if n == 0 and fdp.ConsumeBool() else ffi.cast("int32_t *", budgets.ctypes.data)
    code = lib.llama_uncomp_compress_budgets(target.llm._ctx_ptr(), 0, ptr, n)
    if n != target.n_heads or np.any(budgets < 1):
        assert code == lib.LLAMA_UNCOMP_ERR_PARAMS, code
        return "budgets refused"
    assert code >= 0, code
    target.check_kept(budgets, WINDOW, target.config.n_sink)
    return "budgets: compressed"


def fuzz_split(fdp):
    n_layers = fdp.ConsumeIntInRange(1, 8)
    layers = [LayerInfo(il, fdp.ConsumeIntInRange(1, 4), None) for il in range(n_layers)]
    layers = [LayerInfo(l.il, l.n_head_kv, np.array([fdp.ConsumeFloat() for _ in range(l.n_head_kv)]))
              for l in layers]
    method = ("snapkv", "pyramidkv", "streamingllm", "uncomp")[fdp.ConsumeIntInRange(0, 3)]
    try:
        weights = make_policy(method, fdp.ConsumeIntInRange(1, 5)).weights(layers)
    except ValueError:
        return "split: policy refused"
    if fdp.ConsumeBool():  # arbitrary weights instead of a policy's
        weights = [np.array([fdp.ConsumeFloat() for _ in range(l.n_head_kv)]) for l in layers]
    mean = fdp.ConsumeFloatInRange(-10.0, 1e6)
    low = fdp.ConsumeIntInRange(0, 1000)
    high = (fdp.ConsumeIntInRange(1, 5000) if fdp.ConsumeBool()
            else [np.array(fdp.ConsumeIntListInRange(l.n_head_kv, 1, 5000)) for l in layers])
    flat = np.concatenate(weights)
    try:
        budgets = fit_budgets(weights, mean, low, high)
    except ValueError:
        assert np.any(flat <= 0) or not np.all(np.isfinite(flat)), "a valid split was refused"
        return "split: weights refused"
    assert np.all(np.isfinite(flat)) and np.all(flat > 0), "non-positive weights were accepted"
    got = np.concatenate(budgets)
    hi = np.full(len(got), high) if isinstance(high, int) else np.concatenate(high)
    lo = np.minimum(low, hi)
    assert got.dtype.kind == "i" and len(got) == len(flat)
    assert np.all(got >= lo) and np.all(got <= hi), (got, lo, hi)
    want = min(max(round(mean) * len(got), lo.sum()), hi.sum())
    assert abs(int(got.sum()) - want) <= 1 or not math.isfinite(mean), (got.sum(), want)
    return "split: budgets"


def test_one_input(data: bytes) -> str:
    """Runs one input; returns what happened (e.g. "budgets: compressed", "params refused")."""
    global target
    if target is None:
        target = Target()
    fdp = atheris.FuzzedDataProvider(data)
    return (fuzz_params, fuzz_budgets, fuzz_split)[fdp.ConsumeIntInRange(0, 2)](fdp)


def replay(corpus: str):
    """Runs every input of the corpus once; prints how many inputs ended in each outcome (JSON)."""
    outcomes = collections.Counter()
    for name in sorted(os.listdir(corpus)):
        with open(os.path.join(corpus, name), "rb") as f:
            outcomes[test_one_input(f.read())] += 1
    print(json.dumps(outcomes))


if __name__ == "__main__":
    instrument(sys.modules[__name__])  # this file's branches tell the outcomes apart (refused, compressed, ...)
    if len(sys.argv) == 3 and sys.argv[1] == "--replay":
        replay(sys.argv[2])
    else:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
