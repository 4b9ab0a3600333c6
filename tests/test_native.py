"""Native tests, built with cmake under AddressSanitizer and UBSan, and run."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_native_params_under_asan():
    build = ROOT / "build" / "native-asan"
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DPYUNCOMP_BUILD_TESTS=ON",
                    "-DPYUNCOMP_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Debug", "-DGGML_NATIVE=OFF"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "test-uncomp-params"], check=True, capture_output=True)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1"}
    r = subprocess.run([str(build / "bin" / "test-uncomp-params")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout
