"""Native tests, built with cmake under AddressSanitizer and UBSan, and run."""

import os
import shutil
import subprocess
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
    steps, once with the graph steps a GPU cache uses, on the CPU backend (UNCOMP_DEVICE_PATH=1)."""
    exe = build("test-uncomp-engine")
    env = {**ASAN_ENV, "UNCOMP_DEVICE_PATH": "1" if path == "device" else "0"}
    r = subprocess.run([str(exe), str(pyuncomp.resolve_model(None))], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr[-8000:]
    assert "all checks passed" in r.stdout
    configs = ["cache f16", "cache f16 flash-attn", "cache q8_0", "cache q4_0"]
    assert [line for line in r.stdout.splitlines() if line.startswith("cache ")] == [
        line for config in configs for line in (config, config + ", two sequences")]
