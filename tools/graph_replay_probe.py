"""Does ggml-cuda's CUDA graph capture and replay compute what direct execution computes, under pyuncomp's
hooks? Runs the evaluation harness's steps on token prompts of a seeded sequence of lengths (runs of
equal lengths, as the eval grid has: ggml-cuda captures a graph at the second call with unchanged
node properties) and records, at every evaluation, the argmax and a fingerprint of the last logits
(one JSON line a step, so that a run that aborts keeps the steps before; --log-graphs prints where
ggml-cuda captured or replayed a graph).

    python tools/graph_replay_probe.py OUT.jsonl --model M.gguf --scenario harness   # graphs on
    GGML_CUDA_DISABLE_GRAPHS=1 python tools/graph_replay_probe.py REF.jsonl ...        # graphs off
    python tools/graph_replay_probe.py --compare REF.jsonl OUT.jsonl

Scenarios: ``harness`` (each prompt evaluated unpruned and pruned, saved, then compressed under several
settings and decoded, as ``pyuncomp eval`` does), ``eval`` (the same steps on the evaluation harness's own
prompts, ``--tasks`` at ``--eval-length``, two samples a depth, in its order: for a real model, where
session 27's GPU answered NaN after runs of same-length pruned prefills; ``--fresh`` loads the model
again for every prompt), ``recall`` (chats whose second turn is answered from
the recalled whole cache, with CUDA graphs left as the process has them). The model's weights may be
random (tools: ../shared/tools/synth_gguf.py): only agreement between the two runs is checked.
"""
import argparse
import json
import sys

import pyuncomp  # before numpy: on the GPU machine, numpy imported first crashed the native library's load
import numpy as np

LENGTHS = [2039, 2039, 2039, 4096, 2040, 2040, 2043, 2040]
SETTINGS = [("uncomp", 0.05), ("uncomp", 0.1), ("snapkv", 0.1)]
N_DECODE = 6


def fingerprint(logits: np.ndarray) -> list:
    """a few fixed projections of the logits (equal runs give equal numbers; NaN shows as NaN)"""
    rng = np.random.default_rng(1234)
    return [float(v) for v in rng.standard_normal((4, logits.size)).astype(np.float32) @ logits] + [float(logits.max())]


def log_graph_events(where: dict) -> None:
    """prints ggml-cuda's CUDA graph messages (warm-up complete: a capture; reused; reset) with the step;
    the rest of the log as pyuncomp prints it (a CUDA error's text before an abort among it)"""
    import llama_cpp
    from pyuncomp import _logging

    @llama_cpp.llama_log_callback
    def on_log(level, text, user_data):
        line = text.decode(errors="replace").strip()
        if "CUDA graph" in line or "CUDA Graph" in line:
            print(f"[{where['label']}] {line}", flush=True)
        else:
            _logging._print_at_level(level, text, user_data)

    log_graph_events.keep = on_log  # the callback must outlive this call
    llama_cpp.llama_log_set(on_log, None)


def eval_prompts(args):
    """the evaluation harness's prompts (tokens) for args.tasks at args.eval_length, in its order"""
    from pyuncomp.eval.runner import Evaluator
    from pyuncomp.eval.tasks import make_samples

    ev = Evaluator(args.model, n_ctx=args.n_ctx, n_gpu_layers=0)
    try:
        return [ev.prompt_tokens(s) for t in args.tasks
                for s in make_samples(t, args.eval_length, [0.0, 0.25, 0.5, 0.75, 1.0], 2, args.seed, ev.count_tokens)]
    finally:
        ev.close()


def load(args):
    return pyuncomp.Llama(args.model, n_ctx=args.n_ctx, n_batch=512, n_gpu_layers=args.n_gpu_layers, verbose=False,
                          method="uncomp", ratio=0.1, auto_compress=args.scenario == "recall", seed=0,
                          flash_attn=args.flash_attn, shrink_cache=not args.no_shrink)


def run(args, out) -> None:
    prompts = eval_prompts(args) if args.scenario == "eval" else None
    llm = load(args)
    if args.scenario == "recall":
        # the attribute, not the setter: the setter turns CUDA graphs off on a GPU, which is what is probed
        llm._new_turns = "recall"
    where = {"label": "load"}
    if args.log_graphs:
        log_graph_events(where)
    rng = np.random.default_rng(args.seed)
    n_vocab = llm.n_vocab()

    def record(label):
        logits = llm._last_logits()
        top = np.argsort(-np.nan_to_num(logits, nan=-np.inf))[:5]
        step = {"label": label, "argmax": int(np.argmax(logits)), "finite": bool(np.isfinite(logits).all()),
                "fingerprint": fingerprint(logits), "top": [[int(t), float(logits[t])] for t in top]}
        out.write(json.dumps(step) + "\n")
        out.flush()
        where["label"] = f"after {label}"
        return step["argmax"]

    def decode(label, first):
        token = first
        for i in range(N_DECODE):
            llm.eval([token])
            token = record(f"{label} decode {i}")
        return token

    for p, n in enumerate(args.lengths if prompts is None else [len(t) for t in prompts]):
        tokens = [1] + rng.integers(100, n_vocab, n - 1).tolist() if prompts is None else prompts[p]
        if args.fresh and p > 0:
            llm.close()
            llm = load(args)
        if args.scenario == "recall":
            llm.reset()
            llm.eval(tokens)
            last = decode(f"prompt {p} ({n}) turn 1", record(f"prompt {p} ({n}) turn 1"))
            llm.eval(rng.integers(100, n_vocab, 24).tolist())  # the next turn: restores the whole cache
            decode(f"prompt {p} ({n}) turn 2", record(f"prompt {p} ({n}) turn 2"))
            continue
        for keep in (None, 0.5):
            llm.reset()
            llm.set_compression(prefill_prune=keep is not None, prefill_min_tokens=0,  # as session 27 pruned
                                **({"prefill_keep": keep} if keep else {}))
            try:
                llm.eval(tokens)
            except RuntimeError as e:  # non-finite logits: recorded, and the next prompt goes on
                out.write(json.dumps({"label": f"prompt {p} ({n}) keep {keep} eval", "argmax": -1, "finite": False,
                                      "fingerprint": [], "top": [], "error": str(e)[:120]}) + "\n")
                out.flush()
                continue
            first = record(f"prompt {p} ({n}) keep {keep} eval")
            state = llm.save_state()
            for method, ratio in SETTINGS:
                llm.load_state(state)
                llm.set_compression(method=method, ratio=ratio)
                llm.compress()
                decode(f"prompt {p} ({n}) keep {keep} {method} {ratio}", first)
        llm.set_compression(prefill_prune=False)


def compare(ref_path, out_path, tolerance=1e-3) -> int:
    """steps matched by label: same argmax, finite, fingerprints within tolerance (relative)"""
    ref, out = ({(s := json.loads(line))["label"]: s for line in open(path)} for path in (ref_path, out_path))
    bad = 0
    for label, r in ref.items():
        o = out.get(label)
        if o is None or not (r["finite"] and o["finite"]):
            bad += 1
            print(f"DIFFERS {label}: " + ("missing" if o is None else f"finite {r['finite']} vs {o['finite']}"))
            continue
        diff = max(abs(a - b) for a, b in zip(r["fingerprint"], o["fingerprint"]))
        scale = max(1e-6, max(abs(a) for a in r["fingerprint"]))
        if r["argmax"] != o["argmax"] or diff > tolerance * scale:
            bad += 1
            print(f"DIFFERS {label}: argmax {r['argmax']} vs {o['argmax']}, fingerprint rel diff {diff / scale:.3g}, "
                  f"top {r.get('top', [])[:2]} vs {o.get('top', [])[:2]}")
    print(f"{len(ref) - bad} of {len(ref)} steps agree ({out_path} against {ref_path}; {len(out)} steps there)")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?")
    ap.add_argument("--model")
    ap.add_argument("--scenario", choices=["harness", "eval", "recall"], default="harness")
    ap.add_argument("--tasks", nargs="+", default=["niah_multikey", "niah_multivalue"])
    ap.add_argument("--eval-length", type=int, default=2048)
    ap.add_argument("--n-ctx", type=int, default=8192)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--no-shrink", action="store_true", help="shrink_cache=False, as the evaluation harness's model")
    ap.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    ap.add_argument("--n-gpu-layers", type=int, default=-1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-graphs", action="store_true")
    ap.add_argument("--compare", nargs=2, metavar=("REF", "OUT"))
    ap.add_argument("--tolerance", type=float, default=1e-3, help="--compare: relative fingerprint difference allowed")
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare, tolerance=args.tolerance)
    if not (args.out and args.model):
        ap.error("OUT and --model are needed unless --compare")
    with open(args.out, "w") as out:
        run(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
