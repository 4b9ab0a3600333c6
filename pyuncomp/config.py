"""Compression parameters, validated in Python for types and by the native library for ranges."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Optional

from ._native import ffi, lib

METHODS = tuple(ffi.string(lib.llama_uncomp_method_name(m)).decode() for m in range(lib.LLAMA_UNCOMP_METHOD_COUNT))
# how a chat's next turn meets a compressed history (``Llama(new_turns=...)``)
NEW_TURNS = ("append", "reevaluate", "recall")
# the pruned prefill's floor: the UNComp reference's smallest kept length (its last stage keeps 1536 tokens)
PREFILL_MIN_TOKENS = 1536
# the pruned prefill's ranking window: wider than the compression's so that a chat turn's question, not
# only its closing template tokens, ranks the tokens the later layers see (docs/fidelity.md, "A pruning
# window of its own")
PREFILL_WINDOW = 32
# the most lookahead tokens: each is a decode step over the full cache before the compression
MAX_LOOKAHEAD = 64


@dataclass(frozen=True)
class CompressionConfig:
    """What to keep of the prompt's KV cache.

    ratio: fraction of prompt tokens kept, averaged over layers and KV heads, in (0, 1].
    method: one of ``METHODS``.
    budget: average tokens kept per KV head; overrides ratio when set.
    window: observation window, the last prompt queries that score the prefix.
    pool_kernel: odd width of the 1-D pooling over token scores.
    n_sink: first tokens always kept.
    n_head_groups: UNComp head groups per layer.
    prefill_prune: prune hidden states during the prompt's evaluation (UNComp's first stage): layers
    after ``prefill_layer`` run only on the tokens that layer's window attention ranks highest, about
    ``prefill_keep`` of them, at their own positions, and cache only those (llama, qwen2 and qwen3 architectures).
    prefill_layer: the last layer that sees every token; None: the first full-attention layer from a quarter
    of the way (n_layer // 4) on, and with sliding-window layers not the first full-attention one.
    prefill_keep: fraction of the prompt's tokens the later layers run on, in (0, 1] (the pruning window always).
    prefill_window: the last prompt queries whose attention at ``prefill_layer`` ranks the tokens (the
    compression's ``window`` when larger), in [1, 4096]; a prompt no longer than it is not pruned.
    prefill_min_tokens: the later layers run on at least this many tokens (a shorter prompt is not
    pruned), as the UNComp reference never prunes below 1536: pruning a short prompt saves little time
    and costs the most accuracy (docs/prefill-pruning.md, "A floor on the kept tokens").
    lookahead: before a scored compression, decode up to this many greedy tokens after the prompt over
    its full cache and let their queries score the prefix beside the window's; they are dropped after.
    The answer's first tokens attend to what it copies next (a number's later digits), which the
    question's own queries can rank low. Default 16 (docs/fidelity.md, "Lookahead"); 0: off. At most
    ``MAX_LOOKAHEAD``. Not on models with a sliding-window cache that cannot rewind (Gemma 3 with
    ``swa_full=False``; llama-cpp-python's default is the full-size cache, which can).
    """

    ratio: float = 1.0
    method: str = "uncomp"
    budget: Optional[int] = None
    window: int = 8
    pool_kernel: int = 7
    n_sink: int = 0
    n_head_groups: int = 2
    prefill_prune: bool = False
    prefill_layer: Optional[int] = None
    prefill_keep: float = 0.5
    prefill_window: int = PREFILL_WINDOW
    prefill_min_tokens: int = PREFILL_MIN_TOKENS
    lookahead: int = 16

    def __post_init__(self):
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {self.method!r}")
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, numbers.Real) or not math.isfinite(self.ratio):
            raise ValueError(f"ratio: must be a number in (0, 1], got {self.ratio!r}")
        for f in ("budget", "window", "pool_kernel", "n_sink", "n_head_groups"):
            value = getattr(self, f)
            if f == "budget" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{f}: must be an integer, got {value!r}")
        if not isinstance(self.prefill_prune, bool):
            raise ValueError(f"prefill_prune: must be True or False, got {self.prefill_prune!r}")
        if self.prefill_layer is not None and (isinstance(self.prefill_layer, bool)
                                               or not isinstance(self.prefill_layer, numbers.Integral)
                                               or self.prefill_layer < 0):
            raise ValueError(f"prefill_layer: must be a layer index >= 0 (or None), got {self.prefill_layer!r}")
        if (isinstance(self.prefill_keep, bool) or not isinstance(self.prefill_keep, numbers.Real)
                or not 0.0 < self.prefill_keep <= 1.0):
            raise ValueError(f"prefill_keep: must be a fraction in (0, 1], got {self.prefill_keep!r}")
        if (isinstance(self.prefill_window, bool) or not isinstance(self.prefill_window, numbers.Integral)
                or not 1 <= self.prefill_window <= 4096):
            raise ValueError(f"prefill_window: must be an integer in [1, 4096], got {self.prefill_window!r}")
        if (isinstance(self.prefill_min_tokens, bool) or not isinstance(self.prefill_min_tokens, numbers.Integral)
                or self.prefill_min_tokens < 0):
            raise ValueError(f"prefill_min_tokens: must be an integer >= 0, got {self.prefill_min_tokens!r}")
        if (isinstance(self.lookahead, bool) or not isinstance(self.lookahead, numbers.Integral)
                or not 0 <= self.lookahead <= MAX_LOOKAHEAD):
            raise ValueError(f"lookahead: must be an integer in [0, {MAX_LOOKAHEAD}], got {self.lookahead!r}")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget: must be >= 1 token per KV head (or None to use ratio), got {self.budget!r}")
        message = lib.llama_uncomp_params_check(self._native_ptr())
        if message != ffi.NULL:
            raise ValueError(f"{ffi.string(message).decode()}, got {self._field_of(message)!r}")

    @property
    def pruning_window(self) -> int:
        """the last prompt tokens whose queries rank the prompt in a pruned prefill"""
        return max(self.window, self.prefill_window)

    def prefill_keep_for(self, n_tokens: int) -> Optional[float]:
        """The fraction of an n_tokens prompt a pruned prefill keeps: prefill_keep, raised to keep
        prefill_min_tokens; None (not pruned) when the prompt is no longer than that."""
        if n_tokens <= self.prefill_min_tokens:
            return None
        return max(float(self.prefill_keep), self.prefill_min_tokens / n_tokens)

    def _field_of(self, message) -> object:
        name = ffi.string(message).decode().split(":", 1)[0]
        return getattr(self, name, None)

    def _native_ptr(self):
        p = ffi.new("struct llama_uncomp_params *")
        p.method = METHODS.index(self.method)
        p.ratio = float(self.ratio)
        # out-of-int32 values become -1, which the native check rejects with the field's range
        for f in ("budget", "window", "pool_kernel", "n_sink", "n_head_groups"):
            value = int(getattr(self, f) or 0)
            setattr(p, f, value if -2**31 <= value < 2**31 else -1)
        return p

    @property
    def compresses(self) -> bool:
        return self.method != "full" and (self.ratio < 1.0 or self.budget is not None)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
