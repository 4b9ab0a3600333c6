"""Native tests, built with cmake under AddressSanitizer and UBSan, and run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pyuncomp

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "native-asan"
ASAN_ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1"}

needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")


def build(target):
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(BUILD), "-DPYUNCOMP_BUILD_TESTS=ON",
                    "-DPYUNCOMP_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DGGML_NATIVE=OFF"],
                   check=True, capture_output=True)
    r = subprocess.run(["cmake", "--build", str(BUILD), "--target", target, "-j", str(os.cpu_count() or 2)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return BUILD / "bin" / target


@needs_cmake
def test_native_params_under_asan():
    r = subprocess.run([str(build("test-uncomp-params"))], capture_output=True, text=True, env=ASAN_ENV)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout


@needs_cmake
@pytest.mark.parametrize("path", ["host", "device"])
def test_native_engine_under_asan(path):
    """Observe, compress with per-head budgets, decode, save/restore, bad arguments, two sequences of one
    context compressed independently and decoded in one batch: f16 (flash attention off and on), q8_0
    and q4_0 caches, with libllama (our engine and llama.cpp) under ASan + UBSan; once with the host
    steps (UNCOMP_DEVICE_PATH=0), once with the graph steps every cache uses by default (on the CPU backend)."""
    exe = build("test-uncomp-engine")
    env = {**ASAN_ENV, "UNCOMP_DEVICE_PATH": "1" if path == "device" else "0"}
    r = subprocess.run([str(exe), str(pyuncomp.resolve_model(None))], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr[-8000:]
    assert "all checks passed" in r.stdout
    configs = ["cache f16", "cache f16 flash-attn", "cache q8_0", "cache q4_0"]
    assert [line for line in r.stdout.splitlines() if line.startswith("cache ")] == [
        line for config in configs for line in (config, config + ", two sequences")]


@needs_cmake
def test_device_steps_match_references_under_asan():
    """uncomp-device.h's steps on every ggml device of this build (the CPU here; benchmarks/run_h100.sh
    runs the same binary on CUDA) against references on fresh random inputs, f16 and q8_0, poisoned
    rows kept: native/tests/test-uncomp-device-ops.cpp."""
    r = subprocess.run([str(build("test-uncomp-device-ops"))], capture_output=True, text=True, env=ASAN_ENV)
    assert r.returncode == 0, r.stdout + r.stderr[-8000:]
    assert "device CPU" in r.stdout and "all checks passed" in r.stdout
    assert r.stdout.count("3 rounds of scores, Gram matrices, compaction") == 6


def asan_python_env():
    """The environment that runs Python on the ASan + UBSan libllama: the sanitizer runtime preloaded
    (Python itself is not instrumented), leaks not reported (the interpreter keeps its own at exit)."""
    build("test-uncomp-engine")  # builds the instrumented libllama beside it
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return {**os.environ, "LD_PRELOAD": libasan, "PYUNCOMP_LIB_DIR": str(BUILD / "bin"),
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1"}


def assert_sanitizer_clean(r):
    """A Python run on the instrumented library exited 0 with no ASan or UBSan report."""
    assert r.returncode == 0, r.stderr[-8000:]
    assert "AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-8000:]


GENERATE_UNDER_ASAN = """
import json, sys
import pyuncomp
sys.path.insert(0, {tests!r})
from test_engine import passkey_prompt
assert pyuncomp._native.LIB_DIR.as_posix() == {lib!r}, pyuncomp._native.LIB_DIR
# flash attention: the shrunk cache is fitted (layers placed over each other's unallocated rows)
llm = pyuncomp.Llama({model!r}, n_ctx=2048, method="uncomp", ratio=0.05, flash_attn=True, seed=0, verbose=False)
first = llm(passkey_prompt(60, 0.5, "31415"), max_tokens=8, temperature=0.0)["choices"][0]["text"]
stats = llm.compression_stats()
state = llm.save_state()
turn = llm(passkey_prompt(60, 0.5, "31415") + first + " Say it again: the pass key is", max_tokens=6, temperature=0.0)
llm.load_state(state)
# the same layout set again: its per-head bias is made anew, and a graph kept from before must not read the freed one
turn_again = llm(passkey_prompt(60, 0.5, "31415") + first + " Say it again: the pass key is", max_tokens=6, temperature=0.0)
llm.close()
# a pruned prefill ranked by a pruning window wider than the compression's, interrupted once (its abort
# path), then whole
pruned = pyuncomp.Llama({model!r}, n_ctx=2048, n_batch=256, method="uncomp", ratio=0.05, prefill_prune=True,
                        prefill_min_tokens=0, prefill_window=32, seed=0, verbose=False)
def stop(done, total):
    raise KeyboardInterrupt
pruned.on_prompt_progress = stop
try:
    pruned.eval(pruned.tokenize(passkey_prompt(60, 0.5, "31415").encode()))
except KeyboardInterrupt:
    pass
pruned.on_prompt_progress = None
again = pruned(passkey_prompt(60, 0.5, "31415"), max_tokens=8, temperature=0.0)["choices"][0]["text"]
print(json.dumps({{"first": first, "turn": turn["choices"][0]["text"], "turn_again": turn_again["choices"][0]["text"],
                  "kv_bytes": stats["kv_bytes"], "fitted": stats["fitted"],
                  "kv_bytes_full": stats["kv_bytes_full"], "pruned": again, "prefill_kept": pruned.prefill_kept}}))
pruned.close()
"""


@needs_cmake
def test_python_generate_under_asan(tmp_path):
    """pyuncomp.Llama end to end (prompt evaluation, compression, shrink, generation, a second turn,
    state save and load and the turn again, a pruned prefill interrupted and then whole) on the ASan + UBSan build of
    libllama: any invalid access or UB aborts."""
    env = asan_python_env()
    script = GENERATE_UNDER_ASAN.format(tests=str(ROOT / "tests"), lib=(BUILD / "bin").as_posix(),
                                        model=str(pyuncomp.resolve_model(None)))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert_sanitizer_clean(r)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert "31415" in result["first"], result
    assert result["turn_again"] == result["turn"], result
    assert result["kv_bytes"] < result["kv_bytes_full"] / 5, result
    assert result["fitted"], result
    assert "31415" in result["pruned"] and result["prefill_kept"] is not None, result


@needs_cmake
def test_fuzz_corpus_replays_under_asan(tmp_path):
    """Every input of the fuzzing corpus (tests/fuzz/corpus, grown by tests/fuzz/fuzz_api.py) once, on the
    ASan + UBSan libllama: parameter structs, per-head budget arrays and budget splits end in a clean
    refusal or in a compression whose invariants hold. The corpus reaches each kind of outcome."""
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz" / "fuzz_api.py"), "--replay",
                        str(ROOT / "tests" / "fuzz" / "corpus")],
                       capture_output=True, text=True, env=asan_python_env(), cwd=tmp_path)
    assert_sanitizer_clean(r)
    outcomes = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"params refused", "params: compressed", "budgets refused", "budgets: compressed",
            "split: budgets", "split: weights refused"} <= set(outcomes), outcomes
