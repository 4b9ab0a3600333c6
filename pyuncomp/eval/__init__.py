"""Offline evaluation: does compression keep the model's answers? (``pyuncomp eval``)

    from pyuncomp.eval import evaluate
    result = evaluate("model.gguf", tasks=["passkey"], methods=["full", "uncomp"], ratios=[0.05],
                      lengths=[2048], depths=[0.25, 0.75], samples=1, out_dir="eval-out")
"""

from __future__ import annotations

import numbers
import time
from pathlib import Path
from typing import Iterable, Optional

from ..config import CompressionConfig
from .report import markdown_table, plot_heatmaps, plot_summary, write_json
from .runner import Evaluator, Setting, settings_for, summarize
from .tasks import DEPTH_TASKS, MAX_TOKENS, TASKS, make_samples

__all__ = ["evaluate", "TASKS", "Setting", "settings_for"]


def _check_args(tasks, lengths, depths, samples):
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"task: must be one of {', '.join(TASKS)} (or all), got {t!r}")
    for n in lengths:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 64:
            raise ValueError(f"length: must be an integer number of tokens >= 64, got {n!r}")
    for d in depths:
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0.0 <= d <= 1.0:
            raise ValueError(f"depth: must be a number in [0, 1], got {d!r}")
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
        raise ValueError(f"samples: must be an integer >= 1, got {samples!r}")


def evaluate(model_path: str, tasks: Iterable[str], methods: Iterable[str], ratios: Iterable[float],
             lengths: Iterable[int], depths: Iterable[float] = (0.0, 0.25, 0.5, 0.75, 1.0), samples: int = 1,
             seed: int = 0, out_dir: Optional[str] = None, progress: bool = False, new_turns: str = "append",
             prefill_keeps: Iterable[float] = (), prefill_layer: Optional[int] = None,
             prefill_min_tokens: Optional[int] = None, prefill_window: Optional[int] = None, lookahead: Optional[int] = None, **llama_kwargs) -> dict:
    """Runs every task at every length (and depth, for needle tasks) under every setting (``full``
    once, every other method at every ratio). Returns {"run", "records", "summary"}; with out_dir, also
    writes results.json, summary.md and PNG plots there. new_turns: how the chat task's second turn
    meets the compressed first one (``pyuncomp.Llama``'s parameter). prefill_keeps: every compressing
    setting again with a pruned prefill keeping each fraction after prefill_layer (``prefill_prune``;
    llama, qwen2, qwen3 models), never below prefill_min_tokens and ranked by the last prefill_window
    queries (None: ``CompressionConfig``'s defaults).
    lookahead: greedy tokens whose queries score beside the window's (``pyuncomp.Llama``'s parameter;
    None: its default). Bad arguments raise ValueError."""
    tasks, lengths, depths = list(tasks), list(lengths), list(depths)
    _check_args(tasks, lengths, depths, samples)
    prefill_keeps = list(prefill_keeps)
    settings = settings_for(methods, ratios, prefill_keeps, prefill_layer)
    if prefill_min_tokens is None:
        prefill_min_tokens = CompressionConfig.prefill_min_tokens
    CompressionConfig(prefill_min_tokens=prefill_min_tokens)  # validates it
    llama_kwargs["prefill_min_tokens"] = prefill_min_tokens
    if prefill_window is None:
        prefill_window = CompressionConfig.prefill_window
    CompressionConfig(prefill_window=prefill_window)  # validates it
    llama_kwargs["prefill_window"] = prefill_window
    if lookahead is None:
        lookahead = CompressionConfig.lookahead
    CompressionConfig(lookahead=lookahead)  # validates it
    llama_kwargs["lookahead"] = lookahead
    if not settings or not tasks or not lengths:
        raise ValueError("evaluate: needs at least one task, method and length")
    # the prompt (a few percent over its target), the answer and a chat's second turn must fit
    n_ctx = -(-(int(max(lengths) * 1.05) + max(MAX_TOKENS.values()) + 128) // 256) * 256
    n_ctx_train = _n_ctx_train(str(model_path))
    if max(lengths) > n_ctx_train:
        raise ValueError(f"length: {max(lengths)} tokens is longer than the model's context ({n_ctx_train})")
    ev = Evaluator(str(model_path), n_ctx, **llama_kwargs)
    try:
        ev.llm.new_turns = new_turns
        if "chat" in tasks:
            ev.chat_formatter()  # a model without a chat template is refused before any work
        todo = [s for t in tasks for n in lengths for s in make_samples(t, n, depths, samples, seed, ev.count_tokens)]
        for sample in todo:  # a prompt too long for the context is refused before any answer, not after hours
            ev.prompt_tokens(sample)
        bar = _progress(len(todo) * len(settings), progress)
        records = []
        t0 = time.perf_counter()
        for sample in todo:
            bar.set_description(f"{sample.task} {sample.length}")
            records += ev.run(sample, settings, on_result=lambda r: bar.update(1))
        bar.close()
    finally:
        ev.close()
    summary = summarize(records)
    run = {"model": Path(model_path).name, "tasks": tasks, "settings": [s.name for s in settings],
           "lengths": lengths, "depths": depths, "samples": samples, "seed": seed, "n_ctx": n_ctx, "new_turns": new_turns,
           "prefill_keeps": prefill_keeps, "prefill_layer": prefill_layer,
           "prefill_min_tokens": prefill_min_tokens, "prefill_window": prefill_window, "lookahead": lookahead,
           "seconds": round(time.perf_counter() - t0, 1)}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", run, records, summary)
        (out / "summary.md").write_text(markdown_table(summary) + "\n")
        plot_summary(summary, out / "summary.png")
        for task in tasks:
            if task in DEPTH_TASKS:
                plot_heatmaps(records, task, out / f"{task}_heatmap.png")
    return {"run": run, "records": records, "summary": summary}


def _n_ctx_train(model_path: str) -> int:
    """The context length the model was trained for (the weights are mapped, not read)."""
    from ..llama import Llama

    llm = Llama(model_path, n_ctx=256, method="full", verbose=False)
    try:
        return llm._model.n_ctx_train()
    finally:
        llm.close()


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="answer", dynamic_ncols=True)
