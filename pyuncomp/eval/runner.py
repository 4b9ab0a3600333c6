"""Runs tasks under several compression settings. Each prompt is evaluated once: the full cache is
saved, then restored and compressed under each setting in turn (``auto_compress=False``,
``set_compression``, ``compress``), and the answer decoded greedily. A setting's answer is the one it
gives in normal use: there too the prompt is evaluated with the full cache and compressed after it.
Settings with a pruned prefill (``prefill_keep``) evaluate the prompt once more per fraction kept (the
pruned prefill does not depend on the method or ratio), pruned, and compress that under each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional

import numpy as np

from .._native import llama_cpp
from ..config import METHODS, CompressionConfig
from ..llama import Llama
from .tasks import MAX_TOKENS, Sample, score


@dataclass(frozen=True)
class Setting:
    method: str
    ratio: float
    prefill_keep: Optional[float] = None  # a pruned prefill keeping this fraction; None: not pruned
    prefill_layer: Optional[int] = None   # its last full layer; None: the default

    @property
    def name(self) -> str:
        if self.method == "full":
            return "full"
        if self.prefill_keep is None:
            return f"{self.method} {self.ratio:g}"
        layer = "" if self.prefill_layer is None else f"@{self.prefill_layer}"
        return f"{self.method} {self.ratio:g} prune{self.prefill_keep:g}{layer}"

    def config(self) -> dict:
        """set_compression's arguments for this setting"""
        prune = self.prefill_keep is not None
        return dict(method=self.method, ratio=self.ratio, prefill_prune=prune,
                    **(self.prefill() if prune else {}))

    def prefill(self) -> dict:
        """the pruned prefill's arguments (it does not depend on the method or ratio)"""
        return dict(prefill_keep=self.prefill_keep, prefill_layer=self.prefill_layer)


def settings_for(methods: Iterable[str], ratios: Iterable[float], prefill_keeps: Iterable[float] = (),
                 prefill_layer: Optional[int] = None) -> List[Setting]:
    """full once (if asked), every other method at every ratio, and again with a pruned prefill keeping
    each of prefill_keeps (after prefill_layer); bad names, ratios or fractions raise ValueError."""
    out = []
    prefill_keeps = list(prefill_keeps)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
        for ratio in ([1.0] if method == "full" else ratios):
            for keep in [None] + ([] if method == "full" else prefill_keeps):
                setting = Setting(method, float(ratio), None if keep is None else float(keep),
                                  None if keep is None else prefill_layer)
                CompressionConfig(**setting.config())  # validates the ratio and fraction
                out.append(setting)
    return out


class Evaluator:
    """One model, prompts evaluated once, answers decoded under every setting."""

    def __init__(self, model_path: str, n_ctx: int, **llama_kwargs):
        # the compression settings are set per answer; these only make the model observe prompts
        self.llm = Llama(model_path, n_ctx=n_ctx, method="snapkv", ratio=0.5, auto_compress=False,
                         shrink_cache=False, verbose=False, **llama_kwargs)
        self.n_ctx = n_ctx
        self._template = None

    def close(self) -> None:
        self.llm.close()

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False))

    def token_span(self, tokens: List[int], text: str) -> List[int]:
        """Indices of the tokens that hold the first occurrence of text in the detokenized tokens
        (empty when it does not occur): where a needle sits in an evaluated prompt."""
        ends, decoded = [], b""
        for t in tokens:
            decoded += self.llm.detokenize([t])
            ends.append(len(decoded.decode(errors="replace")))
        at = decoded.decode(errors="replace").find(text)
        if at < 0:
            return []
        return [i for i, e in enumerate(ends) if e > at and (i == 0 or ends[i - 1] < at + len(text))]

    def prompt_tokens(self, sample: Sample) -> List[int]:
        """The tokens sample's prompt is evaluated as; ValueError when they leave the context too little
        room for the task's answer."""
        chat = sample.followup is not None
        tokens = self._chat_tokens(sample.prompt) if chat else self.llm.tokenize(sample.prompt.encode())
        max_tokens = MAX_TOKENS[sample.task]
        if len(tokens) + max_tokens > self.n_ctx:
            raise ValueError(f"{sample.task}: the prompt takes {len(tokens)} tokens, more than the context "
                             f"({self.n_ctx}) leaves for a {max_tokens}-token answer")
        return tokens

    def run(self, sample: Sample, settings: List[Setting], on_result: Optional[Callable[[dict], None]] = None) -> List[dict]:
        """The answer and score of sample under each setting, one record each."""
        llm = self.llm
        chat = sample.followup is not None
        tokens = self.prompt_tokens(sample)
        max_tokens = MAX_TOKENS[sample.task]
        records = []
        for prefill in dict.fromkeys((s.prefill_keep, s.prefill_layer) for s in settings):
            # the prompt evaluated (pruned, if so) once for every setting that shares its prefill
            pruned = next(s for s in settings if (s.prefill_keep, s.prefill_layer) == prefill)
            llm.reset()
            llm.set_compression(prefill_prune=pruned.prefill_keep is not None,
                                **(pruned.prefill() if pruned.prefill_keep is not None else {}))
            llm.eval(tokens)
            first = self._argmax()  # the prompt's next token: computed before any compression
            evaluated = llm.save_state()
            for setting in (s for s in settings if (s.prefill_keep, s.prefill_layer) == prefill):
                records.append(self._answer(sample, tokens, setting, evaluated, first, chat, max_tokens))
                if on_result:
                    on_result(records[-1])
        llm.set_compression(prefill_prune=False, prefill_layer=None)
        return records

    def _answer(self, sample: Sample, tokens: List[int], setting: Setting, evaluated, first: int, chat: bool,
                max_tokens: int) -> dict:
        """The record of setting's answer to sample, from the evaluated prompt's state."""
        llm = self.llm
        llm.load_state(evaluated)
        llm.set_compression(**setting.config())
        llm.compress()
        stats = llm.compression_stats()
        out = self._greedy(first, max_tokens)
        if chat:
            # the second turn is evaluated like a user's next message: compressed after it
            llm.auto_compress = True
            try:
                second = self._chat_tokens(sample.followup, after=out)
                llm.eval(second)
                out = self._greedy(self._argmax(), max_tokens)
            finally:
                llm.auto_compress = False
        text = llm.detokenize(out).decode(errors="replace")
        return {
            "task": sample.task, "length": sample.length, "n_tokens": len(tokens), "depth": sample.depth,
            "index": sample.index, "method": setting.method, "ratio": setting.ratio, "setting": setting.name,
            "prefill_keep": setting.prefill_keep, "score": score(sample.answers, text), "answers": sample.answers,
            "output": text, "kv_fraction": stats["kv_bytes"] / stats["kv_bytes_full"],
        }

    def _argmax(self) -> int:
        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.llm.n_vocab(),))
        return int(np.argmax(logits))

    def _greedy(self, first: int, n: int) -> List[int]:
        """first and up to n - 1 greedy tokens after it (each evaluated but the last), stopping at an
        end-of-generation token."""
        vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        out = [first]
        while len(out) < n and not llama_cpp.llama_vocab_is_eog(vocab, out[-1]):
            self.llm.eval([out[-1]])
            out.append(self._argmax())
        return out

    def chat_formatter(self):
        """The model's chat template as a formatter; ValueError when the model has none."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if self._template is None:
            llm = self.llm
            template = llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise ValueError("chat: the model has no chat template")
            eos = llm.detokenize([llm.token_eos()], special=True).decode()
            bos = llm.detokenize([llm.token_bos()], special=True).decode()
            self._template = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        return self._template

    def _chat_tokens(self, user: str, after: Optional[List[int]] = None) -> List[int]:
        """Tokens of a user turn in the model's chat template, with the assistant's turn opened. after:
        the previous turn's reply, evaluated but for its last token: the tokens then continue the cache."""
        fmt = self.chat_formatter()
        turn = [{"role": "user", "content": user}]
        if after is None:
            return self.llm.tokenize(fmt(messages=turn).prompt.encode(), add_bos=False, special=True)
        # render the conversation with a placeholder first turn; what follows the reply is the new part
        vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        ended = llama_cpp.llama_vocab_is_eog(vocab, after[-1])
        reply = self.llm.detokenize(after, special=False).decode(errors="replace").strip()
        history = [{"role": "user", "content": "x"}, {"role": "assistant", "content": reply}]
        text = fmt(messages=history + turn).prompt
        at = text.find(reply, len(fmt(messages=history[:1]).prompt)) if reply else len(fmt(messages=history[:1]).prompt)
        if at < 0:
            raise ValueError("chat: the model's template rewrites the assistant's reply; cannot continue it")
        rest = self.llm.tokenize(text[at + len(reply):].encode(), add_bos=False, special=True)
        # an ended reply's end token is in the rendered rest; an unfinished one's last token is not evaluated yet
        return rest if ended else [after[-1]] + rest


def summarize(records: List[dict]) -> List[dict]:
    """Mean score per (task, length, setting), and per setting over tasks ("average")."""
    cells = {}
    for r in records:
        cells.setdefault((r["task"], r["length"], r["setting"]), []).append(r)
    rows = [{"task": t, "length": n, "setting": s, "method": rs[0]["method"], "ratio": rs[0]["ratio"],
             "score": float(np.mean([r["score"] for r in rs])), "samples": len(rs),
             "kv_fraction": float(np.mean([r["kv_fraction"] for r in rs]))}
            for (t, n, s), rs in cells.items()]
    by_setting = {}
    for row in rows:
        by_setting.setdefault(row["setting"], []).append(row)
    for s, rs in by_setting.items():
        if len({r["task"] for r in rs}) > 1:  # the mean over tasks (and lengths), each cell weighted alike
            rows.append({"task": "average", "length": None, "setting": s, "method": rs[0]["method"],
                         "ratio": rs[0]["ratio"], "score": float(np.mean([r["score"] for r in rs])),
                         "samples": sum(r["samples"] for r in rs),
                         "kv_fraction": float(np.mean([r["kv_fraction"] for r in rs]))})
    return rows

