"""The ``pyuncomp`` command: generate, chat, evaluate and serve a GGUF model with a compressed KV cache."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import models
from .config import NEW_TURNS


def _add_model_args(p: argparse.ArgumentParser, ratio: float = 1.0) -> None:
    p.add_argument("--model", default=None,
                   help=f"GGUF path or built-in model ({', '.join(models.BUILTIN_MODELS)}); "
                        f"default {models.DEFAULT_MODEL}")
    p.add_argument("--ratio", type=float, default=ratio, help=f"fraction of prompt tokens kept, in (0, 1] (default {ratio})")
    p.add_argument("--method", default="uncomp", help="full, streamingllm, snapkv, pyramidkv or uncomp (default)")
    p.add_argument("--n-ctx", type=int, default=4096, help="context length in tokens (default 4096)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's choice)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers offloaded to the GPU (-1 = all)")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def _load(args):
    from .llama import Llama  # imported late: loading the native library is not needed for --help

    return Llama(str(models.resolve(args.model)), ratio=args.ratio, method=args.method,
                 n_ctx=args.n_ctx, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                 verbose=args.verbose)


def cmd_generate(args) -> int:
    llm = _load(args)
    for chunk in llm.create_completion(args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                       seed=args.seed, stream=True):
        sys.stdout.write(chunk["choices"][0]["text"])
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


CHAT_HELP = """commands: /stats  KV memory held and tokens kept | /ratio R  keep R of later prompts | /method M
  compress later prompts with M | /file PATH  send a document with your next message | /help
An empty line, Ctrl-D or Ctrl-C at the prompt quits; Ctrl-C during a reply stops it."""


def _chat_stats(llm) -> str:
    import numpy as np

    s = llm.compression_stats()
    kept = np.concatenate([np.asarray(k).ravel() for k in s["tokens_kept"]]) if s["tokens_kept"] else np.zeros(1)
    return (f"{s['method']} ratio {s['ratio']}: {s['n_tokens']} tokens, KV held {s['kv_bytes'] / 2**20:.1f} MiB of "
            f"{s['kv_bytes_full'] / 2**20:.1f} MiB full ({s['kv_bytes'] / max(s['kv_bytes_full'], 1):.1%}), "
            f"allocated {s['kv_bytes_allocated'] / 2**20:.1f} MiB; tokens kept per head {kept.min()}-{kept.max()} "
            f"(mean {kept.mean():.0f})" + (f"; host copy for the next turn {s['recall_bytes'] / 2**20:.1f} MiB"
                                           if s["recall_bytes"] else ""))


def _chat_command(llm, line: str, attached: list) -> None:
    """Runs a /command of the chat; problems are reported, the chat goes on."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    try:
        if name == "/stats":
            print(_chat_stats(llm), file=sys.stderr)
        elif name in ("/ratio", "/method"):
            change = {"ratio": float(arg)} if name == "/ratio" else {"method": arg}
            llm.set_compression(**change)
            print(f"later prompts: {llm.compression.method}, ratio {llm.compression.ratio}", file=sys.stderr)
        elif name == "/file":
            with open(arg, encoding="utf-8") as f:
                text = f.read()
            if not text.strip():
                raise ValueError(f"{arg} is empty")
            attached.append(text)
            print(f"attached {arg} ({len(text)} characters); it goes with your next message", file=sys.stderr)
        else:
            print(CHAT_HELP, file=sys.stderr)
    except (ValueError, OSError) as e:
        print(f"{name}: {e}", file=sys.stderr)


def cmd_chat(args) -> int:
    from tqdm import tqdm

    llm = _load(args)
    llm.new_turns = args.new_turns
    messages = [{"role": "system", "content": args.system}] if args.system else []
    attached = []
    print("pyuncomp chat: type a message (/help for commands); an empty line or Ctrl-D quits.", file=sys.stderr)
    bar = None

    def progress(done, total):  # long prompts: a bar while they are evaluated
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="tok", desc="prompt", file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    llm.on_prompt_progress = progress
    while True:
        try:
            user = input("> ")
        except (EOFError, KeyboardInterrupt):
            break
        if not user.strip():
            break
        if user.startswith("/"):
            _chat_command(llm, user.strip(), attached)
            continue
        messages.append({"role": "user", "content": "\n\n".join(attached + [user])})
        attached.clear()
        reply = []
        stream = llm.create_chat_completion(messages, max_tokens=args.max_tokens, temperature=args.temperature,
                                            seed=args.seed, stream=True)
        # Ctrl-C during a reply stops it: a flag checked between tokens, not KeyboardInterrupt, which can
        # land inside a ctypes callback of llama-cpp-python (llama.cpp's log) and be swallowed there
        interrupted = []
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        try:
            for chunk in stream:
                if bar is not None:
                    bar.close()
                    bar = None
                text = chunk["choices"][0]["delta"].get("content") or ""
                reply.append(text)
                sys.stdout.write(text)
                sys.stdout.flush()
                if interrupted:
                    sys.stdout.write(" [stopped]")
                    stream.close()  # now, not at exit: a generator finalised at exit reports into stderr
                    break
        finally:
            signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.close()
                bar = None
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
    print(file=sys.stderr)
    return 0


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}")
    return parse


def cmd_eval(args) -> int:
    from .eval import TASKS, evaluate  # imported late: loads the native library

    tasks = list(TASKS) if args.tasks == ["all"] else args.tasks
    result = evaluate(str(models.resolve(args.model)), tasks, args.methods, args.ratios, args.lengths,
                      depths=args.depths, samples=args.samples, seed=args.seed, out_dir=args.out,
                      progress=not args.quiet, new_turns=args.new_turns, prefill_keeps=args.prefill_keeps,
                      prefill_layer=args.prefill_layer, prefill_min_tokens=args.prefill_min_tokens,
                      prefill_window=args.prefill_window,
                      lookahead=args.lookahead, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers)
    from .eval.report import markdown_table

    print(markdown_table(result["summary"]))
    print(f"\n{len(result['records'])} answers in {result['run']['seconds']} s; results, plots: {args.out}",
          file=sys.stderr)
    return 0


def cmd_profile(args) -> int:
    path = Path(args.prompt_file)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file: no such file: {path}")
    text = path.read_text()
    if not text.strip():
        raise ValueError(f"prompt file: {path} is empty")
    if args.k < 1:
        raise ValueError(f"k: must be >= 1 eigenvalue, got {args.k}")
    from .profile import profile, write_profile  # imported late: loads the native library

    llm = _load(args)
    tokens = llm.tokenize(text.encode())
    if len(tokens) > llm.n_ctx():
        raise ValueError(f"prompt file: {len(tokens)} tokens do not fit the context of {llm.n_ctx()} (raise --n-ctx)")
    llm.eval(tokens)
    data = profile(llm, k=args.k)
    llm.close()
    out = write_profile(data, args.out)
    n_marked = sum(map(sum, data["likely_retrieval_head"]))
    print(f"{data['n_tokens']} tokens, {len(data['layers'])} layers x {len(data['tokens_kept'][0])} KV heads, "
          f"{n_marked} likely retrieval heads; wrote {out / 'profile.json'}, {out / 'profile.png'}")
    return 0


def cmd_bench(args) -> int:
    from . import bench  # imported late: loads the native library

    rows = bench.run(str(models.resolve(args.model)), args.depths, args.method, args.ratio, n_gen=args.n_gen,
                     rounds=args.rounds, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers,
                     flash_attn=args.flash_attn == "on", prefill_prune=args.prefill_prune,
                     prefill_keep=args.prefill_keep, prefill_layer=args.prefill_layer)
    print(bench.markdown_table(rows))
    return 0


def cmd_serve(args) -> int:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"port: must be in [0, 65535], got {args.port}")
    try:
        import uvicorn
        from llama_cpp.server.settings import ModelSettings

        from .server import create_app
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"serve needs the server extra, pip install 'pyuncomp[server]' ({e})") from e

    model = args.model or models.DEFAULT_MODEL
    threads = {} if args.threads is None else {"n_threads": args.threads, "n_threads_batch": args.threads}
    settings = ModelSettings(model=str(models.resolve(model)), model_alias=model, n_ctx=args.n_ctx,
                             n_gpu_layers=args.n_gpu_layers, verbose=args.verbose, **threads)
    app = create_app(settings, new_turns=args.new_turns, ratio=args.ratio, method=args.method)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyuncomp", description="UNComp KV-cache compression for llama.cpp GGUF models")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="complete a prompt, streaming the output")
    gen.add_argument("prompt")
    _add_model_args(gen)
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="multi-turn chat using the model's chat template")
    _add_model_args(chat)
    chat.add_argument("--system", default=None, help="system message")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--new-turns", choices=NEW_TURNS, default="recall",
                      help="recall (default): each turn's compression re-selects from the whole chat, scored by "
                           "the new question, restored from a host-memory copy of the uncompressed cache; "
                           "reevaluate: the same selection, evaluating the chat again each turn (no copy); "
                           "append: a turn is evaluated after the kept tokens (no copy; earlier turns keep "
                           "only what their own end attended to)")
    chat.set_defaults(func=cmd_chat)

    ev = sub.add_parser("eval", help="accuracy of every method and ratio on synthetic long-context tasks",
                        description="Tasks: passkey, niah_multikey, niah_multivalue, vt, cwe, qa, chat, or all. "
                                    "Each prompt is evaluated once and answered under every setting.")
    ev.add_argument("tasks", nargs="+", help="tasks to run, or all")
    ev.add_argument("--model", default=None,
                    help=f"GGUF path or built-in model ({', '.join(models.BUILTIN_MODELS)}); default {models.DEFAULT_MODEL}")
    ev.add_argument("--methods", type=_csv(str), default=["full", "streamingllm", "snapkv", "pyramidkv", "uncomp"],
                    help="comma-separated methods (default: all)")
    ev.add_argument("--ratios", type=_csv(float), default=[0.05, 0.1], help="comma-separated ratios (default 0.05,0.1)")
    ev.add_argument("--prefill-keeps", type=_csv(float), default=[],
                    help="comma-separated fractions: each compressing setting again with a pruned prefill keeping it")
    ev.add_argument("--prefill-layer", type=int, default=None,
                    help="with --prefill-keeps: the pruned prefill's last full layer (default: a quarter of the way, n_layer // 4; with sliding-window layers not the first full-attention one)")
    ev.add_argument("--prefill-min-tokens", type=int, default=None,
                    help="with --prefill-keeps: the fewest tokens the later layers run on; shorter prompts are not pruned "
                         "(default 1536, as UNComp's reference; 0: none)")
    ev.add_argument("--prefill-window", type=int, default=None,
                    help="with --prefill-keeps: the last prompt queries that rank the tokens at the pruning layer "
                         "(default: pyuncomp.Llama's)")
    ev.add_argument("--lookahead", type=int, default=None,
                    help="greedy tokens decoded after each prompt whose queries score it beside the window's, then "
                         "dropped (default: pyuncomp.Llama's; 0: off)")
    ev.add_argument("--lengths", type=_csv(int), default=[2048], help="comma-separated prompt lengths in tokens (default 2048)")
    ev.add_argument("--depths", type=_csv(float), default=[0.0, 0.25, 0.5, 0.75, 1.0],
                    help="needle depths in [0, 1] (default 0,0.25,0.5,0.75,1)")
    ev.add_argument("--samples", type=int, default=1, help="samples per task, length and depth (default 1)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default="pyuncomp-eval", help="directory for results.json, summary.md and plots")
    ev.add_argument("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's choice)")
    ev.add_argument("--n-gpu-layers", type=int, default=0, help="layers offloaded to the GPU (-1 = all)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument("--new-turns", choices=NEW_TURNS, default="append",
                    help="how the chat task's second turn meets the compressed first one (default append)")
    ev.set_defaults(func=cmd_eval)

    prof = sub.add_parser("profile", help="per-head key entropy, tokens kept and likely retrieval heads of a prompt",
                          description="Evaluates the prompt file's text with compression and writes profile.json "
                                      "(per cache layer and KV head: entropy, tokens kept, budget fraction, "
                                      "likely_retrieval_head) and profile.png (heatmaps) into --out. A likely "
                                      "retrieval head is among the lowest-entropy 10% of heads and keeps more "
                                      "tokens than the mean.")
    prof.add_argument("--prompt-file", required=True, help="text file holding the prompt")
    _add_model_args(prof, ratio=0.05)
    prof.add_argument("--k", type=int, default=32,
                      help="eigenvalues of the entropy when the method computes none (uncomp's own is used otherwise)")
    prof.add_argument("--out", default="profile", help="directory for profile.json and profile.png (default profile)")
    prof.set_defaults(func=cmd_profile)

    bench = sub.add_parser("bench", help="decode and prefill speed and KV memory: full cache vs a method",
                           description="At each depth the full cache and the method evaluate the same filler "
                                       "prompt in one process, then decode in alternating rounds; prints a "
                                       "markdown table (decode: medians over rounds).")
    bench.add_argument("--model", default=None,
                       help=f"GGUF path or built-in model ({', '.join(models.BUILTIN_MODELS)}); default {models.DEFAULT_MODEL}")
    bench.add_argument("--depths", "--depth", type=int, nargs="+", default=[2048, 7168],
                       help="prompt lengths in tokens, >= 64 (default 2048 7168)")
    bench.add_argument("--method", default="uncomp", help="streamingllm, snapkv, pyramidkv or uncomp (default)")
    bench.add_argument("--ratio", type=float, default=0.05, help="fraction of prompt tokens kept, in (0, 1) (default 0.05)")
    bench.add_argument("--n-gen", type=int, default=32, help="tokens per timed decode round (default 32)")
    bench.add_argument("--rounds", type=int, default=3, help="decode rounds, alternating between the caches (default 3)")
    bench.add_argument("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's choice)")
    bench.add_argument("--n-gpu-layers", type=int, default=0, help="layers offloaded to the GPU (-1 = all)")
    bench.add_argument("--flash-attn", choices=["on", "off"], default="off")
    bench.add_argument("--prefill-prune", action="store_true",
                       help="add a row of the method with a pruned prefill (UNComp's first stage)")
    bench.add_argument("--prefill-keep", type=float, default=0.5,
                       help="with --prefill-prune: fraction of tokens the later layers run on (default 0.5)")
    bench.add_argument("--prefill-layer", type=int, default=None,
                       help="with --prefill-prune: last layer on every token (default: a quarter of the way, n_layer // 4; with sliding-window layers not the first full-attention one)")
    bench.set_defaults(func=cmd_bench)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server (llama-cpp-python's) on the compressed model",
                           description="Serves /v1/completions, /v1/chat/completions and /v1/models. A request "
                                       "may carry \"compression\": {\"ratio\": 0.1, \"method\": \"snapkv\"} to "
                                       "change the settings for that request; non-streamed responses report the "
                                       "cache in usage.compression.")
    _add_model_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    serve.add_argument("--new-turns", choices=("reevaluate", "recall"), default="reevaluate",
                       help="reevaluate: each request's prompt is evaluated afresh (default); recall: a request "
                            "that continues the last one's history evaluates only the new tokens, from a host "
                            "copy of the whole cache (answers as a fresh evaluation does)")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, TypeError, NotImplementedError, ImportError) as e:
        print(f"pyuncomp: error: {e}", file=sys.stderr)
        return 2
