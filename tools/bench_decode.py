"""``pyuncomp bench`` (pyuncomp/bench.py) under its old name: python tools/bench_decode.py --depth 7168 --threads 2"""
import sys

from pyuncomp.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
