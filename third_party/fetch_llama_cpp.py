#!/usr/bin/env python3
"""Fetch the pinned llama.cpp source and apply pyuncomp's patch series to it.

The source is the copy vendored in the llama-cpp-python sdist named by
``llama-cpp-python.lock``. The sdist is obtained with pip (or taken from
``$PYUNCOMP_LLAMA_SDIST`` when that points at a local copy), its sha256 is checked,
``vendor/llama.cpp`` is extracted into ``third_party/llama.cpp`` and every
``native/patches/*.patch`` is applied in order. A stamp file records the sdist hash and
the hash of the patch series, so a later build reuses the tree unless either changed.

Usage: fetch_llama_cpp.py [--dest DIR] [--patches DIR]   (prints the source dir)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def read_lock(path: Path) -> dict[str, str]:
    lock = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            lock[key.strip()] = value.strip()
    for key in ("package", "version", "sdist", "sha256"):
        if key not in lock:
            raise SystemExit(f"{path}: missing key '{key}'")
    return lock


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def obtain_sdist(lock: dict[str, str], cache: Path) -> Path:
    sdist = cache / lock["sdist"]
    local = os.environ.get("PYUNCOMP_LLAMA_SDIST")
    if local and not sdist.exists():
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, sdist)
    if not sdist.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"fetching {lock['package']}=={lock['version']} sdist with pip", file=sys.stderr)
        # -I: inside a PEP 517 build, pip's isolation hides the interpreter's own pip; isolated mode
        # restores it. --no-binary names only this package: build requirements stay binary wheels.
        r = subprocess.run(
            [sys.executable, "-I", "-m", "pip", "download", "--no-deps", "--quiet",
             "--no-binary", lock["package"], "--dest", str(cache),
             f"{lock['package']}=={lock['version']}"],
        )
        if r.returncode != 0 or not sdist.exists():
            download_from_pypi(lock, sdist)
    actual = sha256_of(sdist)
    if actual != lock["sha256"]:
        sdist.unlink()
        raise SystemExit(f"{sdist.name}: sha256 {actual} does not match the lock file ({lock['sha256']})")
    return sdist


def download_from_pypi(lock: dict[str, str], sdist: Path) -> None:
    """Fallback for interpreters without pip: the same file from PyPI's JSON API (hash checked after)."""
    import json
    import urllib.request

    print("pip unavailable; downloading the sdist from PyPI directly", file=sys.stderr)
    url = f"https://pypi.org/pypi/{lock['package']}/{lock['version']}/json"
    with urllib.request.urlopen(url, timeout=60) as r:
        files = json.load(r)["urls"]
    match = [f["url"] for f in files if f["filename"] == lock["sdist"]]
    if not match:
        raise SystemExit(f"{lock['sdist']} is not on PyPI")
    tmp = sdist.with_suffix(".part")
    urllib.request.urlretrieve(match[0], tmp)
    tmp.rename(sdist)


def patch_series(patches: Path) -> list[Path]:
    return sorted(patches.glob("*.patch"))


def series_hash(lock: dict[str, str], series: list[Path]) -> str:
    digest = hashlib.sha256(lock["sha256"].encode())
    for p in series:
        digest.update(p.name.encode())
        digest.update(p.read_bytes())
    return digest.hexdigest()


def extract_and_patch(sdist: Path, dest: Path, series: list[Path]) -> None:
    prefix = sdist.name[: -len(".tar.gz")] + "/vendor/llama.cpp/"
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tmp_tree = Path(tmp) / "llama.cpp"
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix):
                    m.name = m.name[len(prefix):]
                    members.append(m)
            tar.extractall(tmp_tree, members=members, filter="data")
        # the vendored tree carries a submodule .git file; apply the patches as to a plain tree
        (tmp_tree / ".git").unlink(missing_ok=True)
        env = {**os.environ, "GIT_CEILING_DIRECTORIES": tmp}
        for p in series:
            # --check first, so a patch that no longer applies fails before touching the tree
            for extra in (["--check"], []):
                r = subprocess.run(["git", "apply", "--whitespace=nowarn", *extra, str(p)],
                                   cwd=tmp_tree, env=env, capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"patch {p.name} does not apply to the pinned llama.cpp:\n{r.stderr}")
        if dest.exists():
            shutil.rmtree(dest)
        tmp_tree.rename(dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=HERE / "llama.cpp")
    ap.add_argument("--patches", type=Path, default=ROOT / "native" / "patches")
    ap.add_argument("--lock", type=Path, default=HERE / "llama-cpp-python.lock")
    args = ap.parse_args()

    lock = read_lock(args.lock)
    series = patch_series(args.patches)
    want = series_hash(lock, series)
    stamp = args.dest / ".pyuncomp-stamp"
    if not (stamp.exists() and stamp.read_text().strip() == want):
        sdist = obtain_sdist(lock, HERE / ".cache")
        args.dest.parent.mkdir(parents=True, exist_ok=True)
        extract_and_patch(sdist, args.dest, series)
        stamp.write_text(want + "\n")
        print(f"llama.cpp {lock['version']} extracted with {len(series)} patch(es)", file=sys.stderr)
    print(args.dest)


if __name__ == "__main__":
    main()
