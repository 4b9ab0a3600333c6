"""``pyuncomp.Llama``: llama-cpp-python's ``Llama`` on pyuncomp's libllama, with KV-cache compression."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import threading
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from llama_cpp import _internals

from ._native import context_ptr, ffi, lib, llama_cpp
from .config import NEW_TURNS, CompressionConfig
from .policies import LayerInfo, fit_budgets, make_policy

GGUF_MAGIC = b"GGUF"


# the architectures whose llama.cpp graph builders carry the pruned prefill's layer hook (patch 0005)
PREFILL_ARCHS = ("llama", "qwen2", "qwen3", "gemma3")


def _check(code: int) -> int:
    if code >= 0:
        return code
    names = {getattr(lib, n): n for n in dir(lib) if n.startswith("LLAMA_UNCOMP_ERR_")}
    raise RuntimeError(f"pyuncomp engine error {code} ({names.get(code, 'unknown')})")


def check_gguf(model_path) -> Path:
    """The path of a readable GGUF file, else FileNotFoundError / ValueError saying what is wrong."""
    if not isinstance(model_path, (str, os.PathLike)):
        raise TypeError(f"model_path: must be a path, got {type(model_path).__name__}")
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"model_path: no such file: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"model_path: {path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    return path


class _BorrowedModel:
    """Another ``Llama``'s loaded model, seen through llama-cpp-python's ``LlamaModel`` interface; closing
    it leaves the model to its owner."""

    def __init__(self, model):
        self._owner_model = model

    def __getattr__(self, name):
        return getattr(self._owner_model, name)

    def close(self):
        pass


_model_factory_lock = threading.Lock()


@contextlib.contextmanager
def _borrowing(model):
    """llama-cpp-python's Llama loads its model in its constructor; while this is active it takes
    ``model`` instead (the module-level factory is swapped under a lock)."""
    import llama_cpp.llama as parent_module

    with _model_factory_lock:
        factory = parent_module.internals.LlamaModel
        parent_module.internals.LlamaModel = lambda **_: _BorrowedModel(model)
        try:
            yield
        finally:
            parent_module.internals.LlamaModel = factory


class Llama(llama_cpp.Llama):
    """A drop-in ``llama_cpp.Llama`` whose KV cache keeps only a budget of tokens per layer and KV head.

    Every method of the parent works unchanged. Extra keyword arguments, validated here
    (a bad value raises ``ValueError`` naming the parameter and its range):

    ratio: fraction of prompt tokens kept, averaged over layers and KV heads, in (0, 1]. Default 1.0.
    method: ``full``, ``streamingllm``, ``snapkv``, ``pyramidkv`` or ``uncomp`` (default).
    budget, window, pool_kernel, n_sink, n_head_groups, lookahead: see ``CompressionConfig``.
    prefill_prune, prefill_layer, prefill_keep, prefill_window, prefill_min_tokens: hidden-state pruning while a prompt is evaluated from
    an empty cache (``CompressionConfig``): a faster prefill; needs a compressing method, a llama,
    qwen2 or qwen3 architecture and ``logits_all=False`` (the pruned layers give no per-token logits).
    shrink_cache: after a compression, rebuild the llama context with only the cells the kept tokens
    need plus ``n_batch`` free ones, so that the full-size cache allocation is released (at the next
    evaluation, e.g. the first generated token: the context holds the logits sampled before it); the
    context grows back (up to ``n_ctx``) when an evaluation needs more cells. It also starts small
    (``n_batch`` cells) and grows to what a prompt or a loaded state needs, so a session that loads a
    compressed prompt never allocates the full cache. With flash attention the rebuilt cache is also
    fitted to the compressed layout: each layer allocates only the rows its KV heads hold (its
    ``first_row`` in the layer statistics; ``kv_bytes_allocated`` then follows ``kv_bytes``). The
    next compression, and an evaluation that starts the sequence again, first rebuild it unfitted
    (at its full per-layer size). Default True; not applied yet to models with sliding-window layers
    (Gemma 3).
    auto_compress: compress after every multi-token evaluation (default True). False: prompts are
    observed but the cache is compressed only when ``compress()`` is called, e.g. to compress one
    evaluated prompt under several settings (``save_state``, then ``load_state``, ``set_compression``,
    ``compress`` for each).
    new_turns: how a later prompt (a chat's next turn: any prompt ``generate`` evaluates, or another
    multi-token evaluation) meets a compressed history:
    ``"append"`` (default) evaluates it after the kept tokens and compresses again; ``"reevaluate"``
    evaluates the whole history afresh (full cache, then compressed, scored by the new turn's window),
    so that tokens the first compression evicted can answer the new question, at the price of
    evaluating the history again each turn; ``"recall"`` gets the same selection without evaluating
    the history again: each compression first copies the whole cache of the sequence to host memory
    (``compression_stats()["recall_bytes"]``), and the next turn (or a rewind into the history)
    restores it and evaluates only the tokens since (at least the window's), before compressing scored
    by the new turn (with no copy, e.g. after ``load_state``, the turn re-evaluates the history as
    ``"reevaluate"`` does).
    May be set at any time.
    on_unsupported: what to do when the model's memory is not a KV cache (recurrent or hybrid
    architectures): ``"error"`` (default) raises ValueError naming the architecture; ``"full"`` warns
    (RuntimeWarning) and runs the model with its own, uncompressed memory.
    share_model_with: another open ``Llama`` whose loaded weights this one uses instead of loading
    ``model_path`` again (its own context and cache; model options such as ``n_gpu_layers`` are the
    owner's). Many compressed sessions then fit beside one copy of the model. The owner must stay
    open while others use its model.
    """

    def __init__(
        self,
        model_path: str,
        *,
        ratio: float = CompressionConfig.ratio,
        method: str = CompressionConfig.method,
        budget: Optional[int] = CompressionConfig.budget,
        window: int = CompressionConfig.window,
        pool_kernel: int = CompressionConfig.pool_kernel,
        n_sink: int = CompressionConfig.n_sink,
        n_head_groups: int = CompressionConfig.n_head_groups,
        prefill_prune: bool = CompressionConfig.prefill_prune,
        prefill_layer: Optional[int] = CompressionConfig.prefill_layer,
        prefill_keep: float = CompressionConfig.prefill_keep,
        prefill_window: int = CompressionConfig.prefill_window,
        prefill_min_tokens: int = CompressionConfig.prefill_min_tokens,
        lookahead: int = CompressionConfig.lookahead,
        shrink_cache: bool = True,
        auto_compress: bool = True,
        share_model_with: Optional["llama_cpp.Llama"] = None,
        on_unsupported: str = "error",
        new_turns: str = "append",
        **kwargs,
    ):
        for name, value in (("shrink_cache", shrink_cache), ("auto_compress", auto_compress)):
            if not isinstance(value, bool):
                raise ValueError(f"{name}: must be True or False, got {value!r}")
        if on_unsupported not in ("error", "full"):
            raise ValueError(f"on_unsupported: must be 'error' or 'full', got {on_unsupported!r}")
        self._recall = None
        self._prompt_next = False  # the next evaluation is a prompt's (set by generate)
        # tokens evaluated so far (prompts, re-evaluated history, lookahead and generated tokens): what recall spares
        self.n_evaluated = 0
        self._offloaded = kwargs.get("n_gpu_layers", 0) != 0
        self.new_turns = new_turns
        self.auto_compress = auto_compress  # may be switched at any time
        # called as (tokens evaluated, tokens in the prompt) while a long prompt of a compressing model is
        # evaluated, chunk by chunk (e.g. a progress bar); may be set at any time
        self.on_prompt_progress = None
        self.compression = CompressionConfig(
            ratio=ratio, method=method, budget=budget, window=window,
            pool_kernel=pool_kernel, n_sink=n_sink, n_head_groups=n_head_groups,
            prefill_prune=prefill_prune, prefill_layer=prefill_layer, prefill_keep=prefill_keep,
            prefill_window=prefill_window, prefill_min_tokens=prefill_min_tokens, lookahead=lookahead)
        if prefill_prune and not self.compression.compresses:
            raise ValueError("prefill_prune: needs a compressing method and ratio (the pruned prefill is "
                             "part of the compression engine)")
        if prefill_prune and kwargs.get("logits_all"):
            raise ValueError("prefill_prune: needs logits_all=False (the pruned layers give no per-token logits)")
        self.policy = make_policy(method, n_head_groups) if self.compression.compresses else None
        # a shrinking cache starts small and grows with what it is given (the prompt, a loaded state):
        # a session that loads a compressed prompt never allocates the prompt's full cache
        n_ctx = kwargs.get("n_ctx", 512)
        lazy_cells = 256 * -(-max(kwargs.get("n_batch", 512), 256) // 256)
        lazy = self.compression.compresses and shrink_cache and not kwargs.get("lora_path") and n_ctx > lazy_cells
        if lazy:
            kwargs["n_ctx"] = lazy_cells
        if share_model_with is None:
            super().__init__(model_path=str(check_gguf(model_path)), **kwargs)
        else:
            if not isinstance(share_model_with, llama_cpp.Llama) or getattr(share_model_with._model, "model", None) is None:
                raise ValueError("share_model_with: must be an open pyuncomp.Llama")
            with _borrowing(share_model_with._model):
                super().__init__(model_path=share_model_with.model_path, **kwargs)
        if lazy:
            self._n_ctx = n_ctx
            self.input_ids = np.zeros(n_ctx, dtype=np.intc)
            if self._logits_all:
                self.scores = np.zeros((n_ctx, self._n_vocab), dtype=np.single)
        self._model_owner = share_model_with  # keeps the owner (and its model) alive
        self._attached = False
        self._compressed_upto = 0  # positions evaluated when the cache was last compressed
        self._entropy = None  # per compressible layer, each KV head's key entropy at the last compression
        # rebuilding the context would drop LoRA adapters applied to it at construction
        self._shrink_cache = shrink_cache and not kwargs.get("lora_path")
        self._cells_used = 0  # an upper bound of the cells the cache holds (exact after a rebuild)
        self._prompt_logits = None  # (n_tokens, logits of the last token) of the last evaluated prompt
        self.lookahead_tokens = 0  # tokens the last compression's lookahead decoded (then dropped)
        self._prefill_layer = None  # the pruned prefill's last full layer, None: no pruning
        self.prefill_kept = None  # tokens the later layers ran on in the last pruned prefill
        self._shrink_pending = False
        self._fitted = False  # the context's cache is fitted to the layout (rows below must not be written)
        self._fits = True  # False once a fitted rebuild fitted nothing (e.g. V stored transposed)
        if self.compression.compresses:
            err = lib.llama_uncomp_attach(self._ctx_ptr(), self.compression._native_ptr())
            if err == lib.LLAMA_UNCOMP_ERR_MEMORY:
                arch = self.metadata.get("general.architecture", "?")
                message = (f"method={method!r}: the '{arch}' architecture's memory is not a KV cache "
                           "(recurrent or hybrid), so there is nothing to compress")
                if on_unsupported == "error":
                    raise ValueError(message + "; on_unsupported='full' runs it uncompressed")
                warnings.warn(message + "; running it with its full memory (on_unsupported='full')",
                              RuntimeWarning, stacklevel=2)
                self.compression = CompressionConfig(**{**self.compression.as_dict(), "method": "full"})
                self.policy = None
                self._shrink_cache = False
                if lazy:  # it started small to grow on compression: give it its whole context now
                    self._ctx.close()
                    self._ctx = self._new_context(self._n_ctx)
                return
            _check(err)
            self._attached = True
            self._prefill_layer = self._prefill_layer_of(self.compression)
            sliding = any(s["is_swa"] for s in self._layer_stats(0))
            # a sliding-window cache (Gemma 3's, unless swa_full) reuses the cells its window has left
            # behind, so tokens decoded and removed again would take cells the next token still needs
            self._can_rewind = self.context_params.swa_full or not sliding
            # a rebuilt iSWA context prunes its sliding-window cells differently, which moved Gemma 3's
            # greedy text (a near tie); until that is understood, such models keep their allocation
            if sliding:
                self._shrink_cache = False
                self._resize_context(self._n_ctx)  # its whole allocation from the start

    @property
    def new_turns(self) -> str:
        return self._new_turns

    @new_turns.setter
    def new_turns(self, value: str) -> None:
        if value not in NEW_TURNS:
            raise ValueError(f"new_turns: must be one of {', '.join(map(repr, NEW_TURNS))}, got {value!r}")
        self._new_turns = value
        if value != "append" and self._offloaded:
            # on CUDA, a turn re-selected from the whole history (reevaluate, recall) later replayed a stale
            # CUDA graph ("illegal instruction" at cudaGraphLaunch; SmolLM2's chat grid, session 26), which
            # GGML_CUDA_DISABLE_GRAPHS=1 avoided. Until the cause is found, graphs are off in such a process
            # (ggml reads the variable at its first graph: it must be set before any model has run there)
            os.environ.setdefault("GGML_CUDA_DISABLE_GRAPHS", "1")
        if value != "recall":
            self._recall = None  # (tokens, bytes) of the whole cache at the last compression

    def _prefill_layer_of(self, config: CompressionConfig) -> Optional[int]:
        """The layer a pruned prefill stops at under config (None: no pruning); ValueError when the
        model cannot prune."""
        if not config.prefill_prune:
            return None
        arch = self.metadata.get("general.architecture", "?")
        if arch not in PREFILL_ARCHS:
            raise ValueError(f"prefill_prune: not available for the '{arch}' architecture "
                             f"(only {', '.join(PREFILL_ARCHS)})")
        n_layer = llama_cpp.llama_model_n_layer(self._model.model)
        # the pruning layer ranks the tokens by its keys of all of them: a full-attention layer
        sliding = {s["il"] for s in self._layer_stats(0) if s["is_swa"]}
        full = [il for il in range(n_layer - 1) if il not in sliding]
        if sliding and not self.context_params.swa_full:
            raise ValueError("prefill_prune: needs the full-size sliding-window cache of this model (swa_full=True)")
        if config.prefill_layer is None:
            # a quarter of the way; with sliding-window layers, after the first full-attention one, whose
            # tokens carry only their window's context: ranking there cost Gemma-3-270M 3.1 points, the
            # next full layer 0.0 (docs/fidelity.md, "Gemma 3's pruned qa answers, traced")
            candidates = full[1:] if sliding and len(full) > 1 else full
            return next((il for il in candidates if il >= n_layer // 4), candidates[-1])
        layer = config.prefill_layer
        if not 0 <= layer <= n_layer - 2:
            raise ValueError(f"prefill_layer: must be in [0, {n_layer - 2}] for this {n_layer}-layer model, got {layer}")
        if layer in sliding:
            raise ValueError(f"prefill_layer: layer {layer} is a sliding-window layer; the pruning layer must be a "
                             f"full-attention one: {', '.join(map(str, full))}")
        return layer

    def _ctx_ptr(self):
        return context_ptr(self._ctx.ctx)

    def eval(self, tokens) -> None:
        """Evaluates tokens like the parent; after a multi-token evaluation (a prompt, a new chat
        turn) the sequence's cache is compressed to its budget."""
        # a prompt's evaluation (generate's first) is a turn even when it is one token: a chat's next
        # message whose prefix the cache holds, or a prompt that rewinds into the history
        prompt, self._prompt_next = self._prompt_next, False
        if not self._attached:
            self.n_evaluated += len(tokens)
            return super().eval(tokens)
        diverges = self.n_tokens < self._compressed_upto - self.compression.window
        new_turn = self.new_turns != "append" and self._compressed_upto > 0 and len(tokens) > (0 if prompt else 1)
        if self.n_tokens == 0:
            self._recall = None  # a fresh sequence: the copy was of another history
        if self._recall is not None and (diverges or new_turn):
            tokens = self._restore_recall_copy(tokens)
            diverges = new_turn = False
        if self._fitted and (self.n_tokens == 0 or diverges or new_turn or len(tokens) > 1):
            # a fitted cache takes appended tokens only: a sequence evaluated again from cell 0 needs every
            # layer's rows, and a multi-token evaluation is compressed next (which moves rows below)
            fresh = self.n_tokens == 0 or diverges or new_turn
            self._resize_context(self._ctx.n_ctx(), fit={}, keep=not fresh)
        if self.n_tokens == 0 and not (diverges or new_turn):  # a fresh sequence: no layout of an earlier one
            lib.llama_uncomp_forget(self._ctx_ptr(), 0)
        if diverges or new_turn:
            # diverging inside the compressed history: its evicted tokens cannot be restored, so the
            # whole prompt is evaluated afresh. (The window's tokens are kept by every head at their
            # true positions: rewinding into them is exact.) new_turns="reevaluate" does the same for
            # every new turn, so that its compression is scored by the new question.
            tokens = list(self._input_ids[: self.n_tokens]) + list(tokens)
            self.n_tokens = 0
            self._compressed_upto = 0
            lib.llama_uncomp_forget(self._ctx_ptr(), 0)
        if self._shrink_pending and len(tokens) > 0:  # an exact prompt-cache hit samples the old logits
            self._shrink_pending = False
            self._resize_context(self._cells_held() + max(len(tokens), self.n_batch))
        self._ensure_cells(len(tokens))
        self.n_evaluated += len(tokens)
        if len(tokens) <= 1:
            return super().eval(tokens)
        # only the chunks holding the last `window` tokens (a pruned prefill's: its pruning window) are
        # observed: observing makes the scheduler hand each layer's queries over, a sync per layer and
        # ubatch. The parent evaluates in chunks of n_batch from the first token, so the split keeps its
        # chunks (and so its arithmetic).
        tokens = list(tokens)
        ctx = self._ctx_ptr()
        # a pruned prefill starts from an empty cache and needs more tokens than its window and the floor
        keep = self.compression.prefill_keep_for(len(tokens))
        window = self.compression.pruning_window
        prune = self._prefill_layer is not None and self.n_tokens == 0 and len(tokens) > window and keep is not None
        if not prune:
            window = self.compression.window
        if self.n_tokens == 0:
            self.prefill_kept = None
        if prune:
            self._ctx.kv_cache_seq_rm(-1, 0, -1)
            lib.llama_uncomp_forget(ctx, 0)
            _check(lib.llama_uncomp_prefill_begin(ctx, self._prefill_layer, len(tokens), window))
        try:
            split = max(0, len(tokens) - window) // self.n_batch * self.n_batch
            for start in range(0, split, self.n_batch):  # the parent's own chunks, one at a time for progress
                super().eval(tokens[start:start + self.n_batch])
                if self.on_prompt_progress:
                    self.on_prompt_progress(start + self.n_batch, len(tokens))
            _check(lib.llama_uncomp_observe(ctx, True))
            try:
                super().eval(tokens[split:])
            finally:
                lib.llama_uncomp_observe(ctx, False)
            if prune:  # the later layers, on the tokens the pruning layer ranks highest
                self.prefill_kept = _check(lib.llama_uncomp_prefill_finish(ctx, keep, self.n_batch))
        except BaseException:
            if prune:  # the cache holds a part of the layers: nothing of it can be used
                lib.llama_uncomp_prefill_abort(ctx)
                self.n_tokens = 0
            raise
        logits = self._last_logits()
        if not np.isfinite(logits).all():
            # sampling would read NaN as token 0 (often end of text): an empty answer, not an error
            known = (" A pruned prefill with layers on a GPU is a known case (docs/fidelity.md, \"The pruned prefill on "
                     "the GPU\"); evaluate without prefill_prune." if prune and self._offloaded else "")
            raise RuntimeError(f"pyuncomp: the prompt's evaluation gave non-finite logits (NaN or inf); the model or "
                               f"its backend computed garbage.{known}")
        self._prompt_logits = (self.n_tokens, logits.copy())
        if self.auto_compress:
            self.compress()

    def _last_logits(self) -> np.ndarray:
        """The context's logits of its last evaluated token (the row the sampler reads), writable."""
        ptr = llama_cpp.llama_get_logits_ith(self._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def generate(self, tokens, *args, reset: bool = True, **kwargs):
        """Like the parent. When the prompt is exactly the last compressed prompt (a repeated request,
        or a regenerated answer), the parent would replay its last token over the compressed cache,
        whose logits differ from those of the prompt's own evaluation; instead the tokens generated after
        it are dropped and sampling starts from the prompt's saved logits, as the first time."""
        tokens = list(tokens)
        n = len(tokens)
        if n == 0 and (reset or self.n_tokens == 0):
            raise ValueError("prompt: empty; there is nothing to continue from (give at least one token)")
        if (reset and self._attached and self._prompt_logits is not None and n > 0
                and self._prompt_logits[0] == n == self._compressed_upto < self.n_tokens
                and list(self._input_ids[:n]) == tokens):
            self._ctx.kv_cache_seq_rm(-1, n, -1)
            self.n_tokens = n
            self._last_logits()[:] = self._prompt_logits[1]
            self._requires_eval = False
        self._prompt_next = True  # the parent's first evaluation is the prompt's (its uncached suffix)
        yield from super().generate(tokens, *args, reset=reset, **kwargs)

    def compress(self) -> bool:
        """Compresses the cache now with the current settings, scored by the last evaluated prompt's
        window queries. Returns False when the settings do not compress (``method='full'`` or ratio 1)."""
        if not self._attached or self.policy is None:
            return False
        if self.n_tokens == 0:
            raise RuntimeError("compress: the cache is empty; evaluate a prompt first")
        if self._fitted:  # compaction moves rows into cells a fitted layer has no memory of
            self._resize_context(self._ctx.n_ctx(), fit={})
            # the rebuilt context has no logits: the last token decoded again over the same cache gives them
            last = int(self.input_ids[self.n_tokens - 1])
            self.n_tokens -= 1
            llama_cpp.Llama.eval(self, [last])
        # the whole cache, for the next turn to re-select from (a cache already compressed or pruned
        # cannot give back what it lost: no copy)
        copy = self.new_turns == "recall" and all(min(self._tokens_kept(s["il"], s["n_head_kv"], 0)) == self.n_tokens
                                                  for s in self._layer_stats(0) if not s["is_swa"])
        self._recall = self._copy_sequence() if copy else None
        n = self.n_tokens
        prompt = self._decode_lookahead()
        try:
            self._compress(0, lookahead=self.n_tokens - n, entropy=prompt and prompt[1])
        finally:
            if prompt is not None:
                self._drop_lookahead(n, prompt[0])
        self._compressed_upto = self.n_tokens
        # the shrink waits for the next evaluation: the context holds the logits to sample from,
        # which a rebuilt context would not have
        self._shrink_pending = self._shrink_cache
        return True

    def _decode_lookahead(self) -> Optional[tuple]:
        """Decodes up to ``lookahead`` greedy tokens after the evaluated prompt, over its full cache,
        observing their queries; the window then holds the prompt's last queries followed by theirs,
        and the engine's window (always kept, never scored) covers both. Returns the prompt's own window
        queries ({model layer: rows}) for _drop_lookahead and, for a policy that splits budgets by it, the
        prompt's key entropy (so that the lookahead's keys move no budget), or None when nothing was decoded (lookahead
        off, streamingllm, the prompt's logits unknown, an end token first, no free cell, or a
        sliding-window cache that cannot rewind)."""
        cfg = self.compression
        n = self.n_tokens
        self.lookahead_tokens = 0
        if (cfg.lookahead == 0 or cfg.method == "streamingllm" or self._prompt_logits is None
                or self._prompt_logits[0] != n or not self._can_rewind):
            return None
        steps = min(cfg.lookahead, self._ctx.n_ctx() - self._cells_held(), self.n_ctx() - n)
        vocab = llama_cpp.llama_model_get_vocab(self._model.model)
        token = int(np.argmax(self._prompt_logits[1]))
        if steps <= 0 or llama_cpp.llama_vocab_is_eog(vocab, token):
            return None
        ctx = self._ctx_ptr()
        stats = self._layer_stats(0)
        layers = [s["il"] for s in stats]
        prompt_queries = {il: self.window_queries(il) for il in layers}
        entropy = self._key_entropy(stats, 32, 0) if self.policy.needs_entropy else None
        # greedy tokens by plain decode steps, then all of them evaluated again as one observed batch:
        # observing makes the scheduler wait after every graph split, which costs a step 1.6-4x its time
        # on the CPU (session 32); a batch pays that once. The last token's logits choose nothing, so its
        # plain step is skipped.
        tokens = [token]
        while len(tokens) < steps:
            llama_cpp.Llama.eval(self, [tokens[-1]])
            self.n_evaluated += 1
            token = int(np.argmax(self._last_logits()))
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break  # an end token stops it early
            tokens.append(token)
        self.n_tokens = n  # the plain steps' cells are overwritten by the batch (eval removes them first)
        self.lookahead_tokens = len(tokens)
        window = cfg.window + self.lookahead_tokens
        _check(lib.llama_uncomp_set_params(ctx, replace(cfg, window=window)._native_ptr()))
        _check(lib.llama_uncomp_observe(ctx, True))
        try:
            llama_cpp.Llama.eval(self, tokens)
            self.n_evaluated += len(tokens)
        finally:
            lib.llama_uncomp_observe(ctx, False)
        lookahead_queries = {il: self.window_queries(il) for il in layers}
        self._set_window_queries({il: np.concatenate([prompt_queries[il], lookahead_queries[il]]) for il in layers},
                                 window=window)
        return prompt_queries, entropy

    def _drop_lookahead(self, n: int, prompt_queries: dict) -> None:
        """Rewinds the sequence to its n prompt tokens after a compression with lookahead (every head kept
        the lookahead tokens, in the last cells: the rewind is exact), with the prompt's settings, window
        queries and logits back."""
        self._ctx.kv_cache_seq_rm(-1, n, -1)
        self.n_tokens = n
        _check(lib.llama_uncomp_set_params(self._ctx_ptr(), self.compression._native_ptr()))
        self._set_window_queries(prompt_queries)
        self._last_logits()[:] = self._prompt_logits[1]

    def _copy_sequence(self):
        """(tokens, bytes): the tokens sequence 0 holds and its whole cache, copied to host memory."""
        ctx = self._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        data = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(ctx, data, size, 0) != size:
            raise RuntimeError("pyuncomp: could not copy the cache for new_turns='recall'")
        return np.array(self._input_ids[: self.n_tokens]), data

    def _restore_recall_copy(self, tokens) -> list:
        """Puts the whole cache copied at the last compression back, rewound to the longest prefix its
        tokens share with the sequence's; returns what to evaluate after it: the sequence's tokens since
        that prefix, then tokens. At least the observation window is evaluated again, so that the next
        compression is scored by as many queries as a fresh evaluation of the whole prompt."""
        copied, data = self._recall
        n = min(len(copied), self.n_tokens)
        keep = int(np.argmin(np.append(copied[:n] == self._input_ids[:n], False)))  # the first difference
        keep = max(0, min(keep, self.n_tokens + len(tokens) - self.compression.window))
        pending = list(self._input_ids[keep: self.n_tokens]) + list(tokens)
        lib.llama_uncomp_forget(self._ctx_ptr(), 0)  # the compressed layout goes with the compressed rows
        if self._fitted or self._ctx.n_ctx() < len(copied) + len(pending):
            self._resize_context(len(copied) + max(len(pending), self.n_batch), fit={}, keep=False)
        if llama_cpp.llama_state_seq_set_data(self._ctx.ctx, data, len(data), 0) != len(data):
            raise RuntimeError("pyuncomp: could not restore the cache copied for new_turns='recall'")
        self._ctx.kv_cache_seq_rm(0, keep, -1)
        self.n_tokens = keep
        self._compressed_upto = 0
        self._shrink_pending = False
        self._cells_used = keep
        self._recall = None  # the next compression copies the cache again
        return pending

    def set_compression(self, **changes) -> None:
        """Changes compression settings (the keyword arguments of the constructor's compression
        parameters) for later compressions, keeping the cache and the observed prompt: a prompt
        evaluated with ``auto_compress=False`` can be compressed under each setting in turn. A larger
        ``window`` than observed needs the prompt evaluated again."""
        config = CompressionConfig(**{**self.compression.as_dict(), **changes})
        if config.compresses and not self._attached:
            raise ValueError("set_compression: this model was built without compression (method='full' or "
                             "ratio=1.0), so no prompt was observed; build it with a compressing method")
        if self._attached:
            prefill_layer = self._prefill_layer_of(config)
            _check(lib.llama_uncomp_set_params(self._ctx_ptr(), config._native_ptr()))
            self._prefill_layer = prefill_layer
        self.compression = config
        self.policy = make_policy(config.method, config.n_head_groups) if config.compresses else None

    def n_ctx(self) -> int:
        """The context size asked for (the cache may allocate fewer cells while compressed)."""
        return getattr(self, "_n_ctx", None) or self._ctx.n_ctx()

    def _create_completion(self, *args, **kwargs):
        # llama-cpp-python checks a prompt against n_ctx but names the live context's size in its message,
        # which is the smaller allocation of a compressed cache: say the size the check used
        try:
            return (yield from super()._create_completion(*args, **kwargs))
        except ValueError as e:
            too_long = re.fullmatch(r"Requested tokens \((\d+)\) exceed context window of \d+", str(e))
            if too_long is None:
                raise
            raise ValueError(f"Requested tokens ({too_long.group(1)}) exceed context window of {self.n_ctx()}") from None

    def _cells_held(self) -> int:
        """The cells the cache holds now: the most any cache layer holds for sequence 0."""
        return max(s["n_cells"] for s in self._layer_stats(0))

    def _ensure_cells(self, n_new: int) -> None:
        """Before evaluating n_new tokens: grows a shrunk context so that they fit (up to n_ctx)."""
        if not self._shrink_cache:
            return  # the context keeps its n_ctx cells
        self._cells_used += n_new
        if self._cells_used <= self._ctx.n_ctx():
            return
        self._cells_used = self._cells_held() + n_new  # exact: a rewind may have freed cells
        if self._cells_used > self._ctx.n_ctx():
            # geometric growth: a long generation rebuilds the context a logarithmic number of times
            self._resize_context(max(self._cells_used + self.n_batch, self._ctx.n_ctx() * 3 // 2))
            self._cells_used += n_new  # the resize counted the cells held; the n_new tokens come next

    def _resize_context(self, n_cells: int, fit: Optional[dict] = None, keep: bool = True) -> None:
        """Rebuilds the llama context with n_cells cells (rounded up to 256, at most n_ctx) and, with
        keep, moves the cache into it: its cells (which sit in the first cells, compacted), the per-head
        layout and the observed window queries. fit: the layout ({model layer: first cell of each KV
        head}) the new cache's layers are fitted to (native ``llama_uncomp_fit_next_cache``), ``{}``
        for none; default: the current one. The last logits do not move (llama.cpp's state has none):
        evaluate before sampling."""
        n_cells = min(self._n_ctx, -(-n_cells // 256) * 256)
        layout = self._head_starts() if keep else {}
        fit = layout if fit is None else fit
        if n_cells == self._ctx.n_ctx() and keep and self._fitted == (bool(fit) and self._fits):
            return
        old = self._ctx.ctx
        if keep:
            size = llama_cpp.llama_state_get_size(old)
            state = (ctypes.c_uint8 * size)()
            size = llama_cpp.llama_state_get_data(old, state, size)
            queries = {s["il"]: self.window_queries(s["il"]) for s in self._layer_stats(0)}
        lib.llama_uncomp_detach(self._ctx_ptr())
        self._attached = False
        self._ctx.close()  # before allocating the new one: the point is not to hold both
        first_row = np.zeros(llama_cpp.llama_model_n_layer(self._model.model), dtype=np.int32)
        for il, starts in fit.items():
            first_row[il] = int(np.min(starts))
        _check(lib.llama_uncomp_fit_next_cache(ffi.cast("int32_t *", first_row.ctypes.data), first_row.size))
        try:
            self._ctx = self._new_context(n_cells)
        finally:
            lib.llama_uncomp_fit_next_cache(ffi.NULL, 0)
        _check(lib.llama_uncomp_attach(self._ctx_ptr(), self.compression._native_ptr()))
        self._attached = True
        self._fitted = any(s["first_row"] > 0 for s in self._layer_stats(0))
        self._fits = self._fits and (self._fitted or not fit)  # no fitting at all: flash attention off
        if keep:
            if llama_cpp.llama_state_set_data(self._ctx.ctx, state, size) != size:
                raise RuntimeError("pyuncomp: could not move the cache into the resized context")
            self._set_head_starts(layout)
            self._set_window_queries(queries)
        self._cells_used = self._cells_held()

    def _set_window_queries(self, queries: dict, window: Optional[int] = None) -> None:
        """Restores observed window queries ({model layer: rows}, the last ``window`` of them kept;
        default: the settings' window)."""
        for il, rows in queries.items():
            rows = np.ascontiguousarray(rows[-(window or self.compression.window):], dtype=np.float32)
            if len(rows):
                _check(lib.llama_uncomp_set_window_queries(self._ctx_ptr(), il, ffi.cast("float *", rows.ctypes.data), len(rows)))

    def _new_context(self, n_cells: int):
        """A llama context like this model's, with n_cells cells (not in the parent's exit stack:
        ``close`` closes it)."""
        params = type(self.context_params).from_buffer_copy(self.context_params)
        params.n_ctx = n_cells
        return _internals.LlamaContext(model=self._model, params=params, verbose=self.verbose)

    def _compress(self, seq_id: int, lookahead: int = 0, entropy: Optional[list] = None) -> None:
        """Splits the sequence's budget with the policy and lets the engine evict down to it. lookahead:
        the sequence ends with that many lookahead tokens, which every head keeps beyond its budget.
        entropy: the cache layers' key entropies to split by (default: computed now)."""
        cfg = self.compression
        stats = self._layer_stats(seq_id)
        compressible = [s for s in stats if not s["is_swa"]]
        layers = [LayerInfo(il=s["il"], n_head_kv=s["n_head_kv"]) for s in compressible]
        if self.policy.needs_entropy:
            if entropy is None:
                entropy = self._key_entropy(stats, 32, seq_id, for_compress=True)
            self._entropy = [e for s, e in zip(stats, entropy) if not s["is_swa"]]
            layers = [LayerInfo(layer.il, layer.n_head_kv, e) for layer, e in zip(layers, self._entropy)]
        held = max(s["n_cells"] for s in compressible)
        held_per_head = [self._tokens_kept(s["il"], s["n_head_kv"], seq_id) for s in compressible]
        # the prompt's budgets (as without a lookahead), then the lookahead's tokens on top of each
        mean = cfg.budget if cfg.budget is not None else cfg.ratio * (self.n_tokens - lookahead)
        budgets = iter(b + lookahead for b in fit_budgets(self.policy.weights(layers), mean, cfg.window + cfg.n_sink,
                                                          [h - lookahead for h in held_per_head]))
        # one entry per KV head of every cache layer; sliding-window layers keep what they hold
        flat = np.concatenate([np.full(s["n_head_kv"], held) if s["is_swa"] else next(budgets) for s in stats])
        flat = np.ascontiguousarray(flat, dtype=np.int32)
        _check(lib.llama_uncomp_compress_budgets(self._ctx_ptr(), seq_id, ffi.cast("int32_t *", flat.ctypes.data), flat.size))

    def _tokens_kept(self, layer: int, n_head_kv: int, seq_id: int) -> np.ndarray:
        out = np.empty(n_head_kv, dtype=np.int32)
        _check(lib.llama_uncomp_tokens_kept(self._ctx_ptr(), seq_id, layer, ffi.cast("int32_t *", out.ctypes.data), n_head_kv))
        return out

    def _key_entropy(self, stats: list, k: int, seq_id: int, for_compress: bool = False) -> list:
        """Each cache layer's KV-head key entropies (one native call for all layers). for_compress: the
        compression of seq_id follows at once (the engine starts its scoring on the device meanwhile)."""
        out = np.empty(sum(s["n_head_kv"] for s in stats), dtype=np.float32)
        entropy = lib.llama_uncomp_key_entropy_for_compress if for_compress else lib.llama_uncomp_key_entropy
        _check(entropy(self._ctx_ptr(), seq_id, k, ffi.cast("float *", out.ctypes.data), out.size))
        return np.split(out, np.cumsum([s["n_head_kv"] for s in stats])[:-1])

    def save_state(self):
        """Saves the state like the parent, with the compressed cache's per-head layout and the
        observed window queries of the last evaluated prompt."""
        state = super().save_state()
        if self._attached:
            state.uncomp_cells = self._cells_held()
            state.uncomp_head_start = self._head_starts()
            # the observed prompt queries too: a saved uncompressed prompt can be compressed after a load
            state.uncomp_window_queries = {s["il"]: self.window_queries(s["il"]) for s in self._layer_stats(0)}
            # and the prompt's own logits: a compressed prompt cannot give them again
            if self._prompt_logits is not None and self._prompt_logits[0] == self.n_tokens:
                state.uncomp_prompt_logits = self._prompt_logits[1].copy()
        return state

    def _head_starts(self) -> dict:
        """The per-head layout: {model layer: the first cell of each KV head} for layers not all at 0."""
        starts = {}
        for s in self._layer_stats(0):
            start = np.empty(s["n_head_kv"], dtype=np.uint32)
            _check(lib.llama_uncomp_head_start(self._ctx_ptr(), 0, s["il"], ffi.cast("uint32_t *", start.ctypes.data), start.size))
            if start.any():
                starts[s["il"]] = start
        return starts

    def _set_head_starts(self, starts: dict) -> None:
        for il, start in starts.items():
            start = np.ascontiguousarray(start, dtype=np.uint32)
            _check(lib.llama_uncomp_set_head_start(self._ctx_ptr(), 0, il, ffi.cast("uint32_t *", start.ctypes.data), start.size))

    def load_state(self, state) -> None:
        """Restores a saved state (compressed or not) like the parent."""
        self._recall = None  # the copy was of the history before
        if self._attached:
            lib.llama_uncomp_forget(self._ctx_ptr(), 0)
            cells = getattr(state, "uncomp_cells", state.n_tokens)
            layout = getattr(state, "uncomp_head_start", {})
            if self._shrink_cache and layout:
                # a compressed state: the context its next evaluation would shrink to at once (the saved
                # cells and a batch of room, fitted to the saved layout), so a session that loads a
                # compressed prompt allocates that and nothing more, once
                self._resize_context(cells + self.n_batch, fit=layout, keep=False)
            elif cells > self._ctx.n_ctx() or self._fitted:
                self._resize_context(max(cells, self._ctx.n_ctx()), fit={}, keep=False)  # room for the saved cells
        super().load_state(state)
        if self._attached:
            self._set_head_starts(getattr(state, "uncomp_head_start", {}))
            self._set_window_queries(getattr(state, "uncomp_window_queries", {}))
            # a cache whose compressible (non-sliding-window) layers hold fewer cells than evaluated
            # positions was compressed up to there
            stats = self.compression_stats()
            held = min(kept[0] for layer, kept in zip(stats["layers"], stats["tokens_kept"])
                       if layer not in stats["swa_layers"])
            self._compressed_upto = self.n_tokens if held < self.n_tokens else 0
            self._shrink_pending = self._shrink_cache and self._compressed_upto > 0
            logits = getattr(state, "uncomp_prompt_logits", None)
            if logits is not None and self._compressed_upto > 0:
                self._restore_prompt_logits(state, logits)
            elif logits is not None:  # an uncompressed prompt: its compression may decode a lookahead from them
                self._prompt_logits = (self.n_tokens, logits.copy())

    def _restore_prompt_logits(self, state, logits: np.ndarray) -> None:
        """After loading a state saved at the end of a compressed prompt: gives the context the prompt's
        logits, so that generation samples from them as the first time instead of replaying the last
        token over the compressed cache (llama.cpp's state holds no logits). The context gets a logits
        row by decoding the last token again; the saved cache then replaces what that decode wrote."""
        n = self.n_tokens
        last = int(self.input_ids[n - 1])
        self.n_tokens = n - 1
        llama_cpp.Llama.eval(self, [last])  # removes the cells from position n - 1 on first
        llama_cpp.Llama.load_state(self, state)  # the saved cache again; the logits row stays
        self._last_logits()[:] = logits
        self._prompt_logits = (n, logits.copy())
        self._requires_eval = False  # the parent samples from these logits on an exact prompt hit

    def close(self) -> None:
        # a constructor that refused its arguments leaves no native state behind to close
        if getattr(self, "_attached", False) and self._ctx.ctx is not None:
            lib.llama_uncomp_detach(self._ctx_ptr())
            self._attached = False
        if hasattr(self, "_stack"):
            super().close()
        if hasattr(self, "_ctx"):
            self._ctx.close()  # a resized context is not in the parent's exit stack

    def _layer_stats(self, seq_id: int) -> list:
        """One dict per cache layer (fields of struct llama_uncomp_layer_stats), by model layer."""
        ctx = self._ctx_ptr()
        n_layers = lib.llama_uncomp_layer_stats(ctx, seq_id, ffi.NULL, 0)
        if n_layers < 0:
            raise RuntimeError("this model's memory is not a KV cache (recurrent models have nothing to compress)")
        stats = ffi.new("struct llama_uncomp_layer_stats[]", n_layers)
        lib.llama_uncomp_layer_stats(ctx, seq_id, stats, n_layers)
        fields = [name for name, _ in ffi.typeof("struct llama_uncomp_layer_stats").fields]
        return [{f: getattr(s, f) for f in fields} for s in stats]

    @functools.cached_property
    def _key_widths(self) -> dict:
        """{model layer: (n_embd_k_gqa, n_head_kv)} of each cache layer. The model fixes them; asking the
        native stats each time walked a pruned cache's cells, 64 times per compression with lookahead."""
        return {s["il"]: (s["n_embd_k_gqa"], s["n_head_kv"]) for s in self._layer_stats(0)}

    def cached_keys(self, layer: int, seq_id: int = 0):
        """The keys model layer ``layer`` holds for ``seq_id``, ordered by position, as a float32
        array [tokens, n_head_kv * head_dim] (post-RoPE, dequantised)."""
        if layer not in self._key_widths:
            raise ValueError(f"layer: {layer} is not a cache layer of this model")
        ctx = self._ctx_ptr()
        keys = np.empty((_check(lib.llama_uncomp_read_keys(ctx, seq_id, layer, ffi.NULL, 0)), self._key_widths[layer][0]),
                        dtype=np.float32)
        _check(lib.llama_uncomp_read_keys(ctx, seq_id, layer, ffi.cast("float *", keys.ctypes.data), keys.size))
        return keys

    def window_queries(self, layer: int):
        """The post-RoPE queries of the last ``window`` prompt tokens that scored layer ``layer`` at the
        last compression: float32 [rows, n_head * head_dim], oldest first."""
        if not self._attached:
            raise RuntimeError("window_queries: this model does not compress (ratio=1.0 or method='full')")
        if layer not in self._key_widths:
            raise ValueError(f"layer: {layer} is not a cache layer of this model")
        n_embd_k_gqa, n_head_kv = self._key_widths[layer]
        head_dim = n_embd_k_gqa // n_head_kv
        ctx = self._ctx_ptr()
        n_rows = _check(lib.llama_uncomp_window_queries(ctx, layer, ffi.NULL, 0))
        queries = np.empty((n_rows, llama_cpp.llama_model_n_head(self._model.model) * head_dim), dtype=np.float32)
        _check(lib.llama_uncomp_window_queries(ctx, layer, ffi.cast("float *", queries.ctypes.data), queries.size))
        return queries

    def entropy_profile(self, k: int = 32, seq_id: int = 0) -> list:
        """Truncated matrix entropy (top ``k`` eigenvalues, normalised by log(head_dim)) of each KV
        head's cached keys, one list per cache layer: the uncertainty UNComp splits budgets by."""
        return [[float(v) for v in e] for e in self._key_entropy(self._layer_stats(seq_id), k, seq_id)]

    def compression_stats(self, seq_id: int = 0) -> dict:
        """What the KV cache of sequence ``seq_id`` holds now.

        Keys: ``method``, ``ratio``, ``n_tokens`` (tokens evaluated), ``kv_bytes`` (K+V bytes held),
        ``kv_bytes_full`` (what a full cache holds for the same tokens), ``kv_bytes_allocated``,
        ``fitted`` (each layer allocates only the rows it holds, ``shrink_cache``), ``recall_bytes``
        (host memory of the whole-cache copy ``new_turns="recall"`` keeps for the next turn),
        ``layers`` (model layer index of each cache layer), ``swa_layers``, and ``tokens_kept``
        (per cache layer, one count per KV head), ``entropy`` (the key entropy of each KV head of each
        compressible layer that the last compression split budgets by; None for methods that do not
        use it), ``lookahead_tokens`` (tokens the last compression's lookahead decoded and dropped).
        """
        stats = self._layer_stats(seq_id)
        n_tokens = self.n_tokens
        layers, swa_layers, tokens_kept = [], [], []
        kv_bytes = kv_bytes_full = kv_bytes_allocated = 0
        for s in stats:
            kept = self._tokens_kept(s["il"], s["n_head_kv"], seq_id)
            layers.append(s["il"])
            if s["is_swa"]:
                swa_layers.append(s["il"])
            tokens_kept.append([int(k) for k in kept])
            kv_bytes += s["bytes_held"]
            kv_bytes_allocated += s["bytes_alloc"]
            # sliding-window layers hold at most their window also in a full cache
            kv_bytes_full += s["bytes_held"] if s["is_swa"] else s["bytes_per_token"] * n_tokens
        return {
            "method": self.compression.method,
            "ratio": self.compression.ratio,
            "n_tokens": n_tokens,
            "kv_bytes": kv_bytes,
            "kv_bytes_full": kv_bytes_full,
            "kv_bytes_allocated": kv_bytes_allocated,
            "layers": layers,
            "swa_layers": swa_layers,
            "tokens_kept": tokens_kept,
            "entropy": None if self._entropy is None else [[float(v) for v in e] for e in self._entropy],
            "fitted": self._fitted,
            "recall_bytes": 0 if self._recall is None else len(self._recall[1]),
            "lookahead_tokens": self.lookahead_tokens,
        }
