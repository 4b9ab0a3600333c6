"""An OpenAI-compatible server: llama-cpp-python's own app (``llama_cpp.server``) serving a ``pyuncomp.Llama``.

Two additions to the stock app: a request may carry ``"compression": {"ratio": 0.1, "method": "snapkv"}``
to change the server's settings for that request, and a non-streaming response reports the cache in
``usage.compression``. A server made with ``new_turns="recall"`` answers a chat's next request (the
history it was sent before, and more) from the whole cache it copied at the last compression, evaluating
only the new tokens. Needs the ``server`` extra (fastapi, uvicorn, sse-starlette, starlette-context,
pydantic-settings).
"""

from __future__ import annotations

import contextlib
import dataclasses
from contextvars import ContextVar
from functools import partial
from typing import Any, Optional

import llama_cpp
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRouter
from llama_cpp.server import app as stock
from llama_cpp.server.errors import RouteErrorHandler
from llama_cpp.server.settings import ModelSettings, ServerSettings
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import Field

from .config import CompressionConfig
from .llama import Llama

# The request's compression changes. The stock handlers call the model in a worker thread (anyio),
# which runs in a copy of the request's context, so the model reads them there, under the model lock.
_request_changes: ContextVar[dict] = ContextVar("pyuncomp_compression_changes", default={})


class ServedLlama(Llama):
    """A ``Llama`` that compresses each completion with the settings it was built with, updated by
    the request's changes, and adds ``usage.compression`` to each non-streamed completion.

    Each request is answered as if it came first: a cache that an earlier request compressed (or kept
    under other settings) is not the prompt's exact cache, so the prompt is evaluated afresh. (Reusing
    it, as llama-cpp-python does with a prefix it has cached, would e.g. answer a repeated request from
    its last prompt token replayed over the compressed cache, which differs from the first answer.)
    With ``new_turns="recall"`` a request under unchanged settings reuses the whole-cache copy of the
    last compression instead (``Llama``'s recall: the shared prefix is restored, the rest evaluated,
    then compressed scored by the new prompt), which answers as a fresh evaluation does.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.served_compression = self.compression

    def create_completion(self, *args, **kwargs):
        # set at every call rather than restored after one: a stream the client abandons may never finish
        config = dataclasses.replace(self.served_compression, **_request_changes.get())
        if config != self.compression or (self._compressed_upto > 0 and self.new_turns != "recall"):
            self.set_compression(**config.as_dict())
            self.reset()
        evaluated_before = self.n_evaluated
        completion = super().create_completion(*args, **kwargs)
        if isinstance(completion, dict):  # not a stream
            stats = self.compression_stats()
            completion["usage"]["compression"] = {
                **{key: stats[key] for key in ("method", "ratio", "n_tokens", "kv_bytes", "kv_bytes_full")},
                "evaluated_tokens": self.n_evaluated - evaluated_before}
        return completion


# exclude=True: the stock handlers pass the body's fields to the model as keyword arguments. Any type:
# the stock routes answer a body that fails validation with a 500; _checked_changes answers with a 400.
_compression_field = Field(
    default=None, exclude=True,
    description="Compression settings for this request, e.g. {\"ratio\": 0.1, \"method\": \"snapkv\"} (ratio, "
                "method, budget, window, pool_kernel, n_sink, n_head_groups; see CompressionConfig); "
                "unset ones keep the server's.")


class CompletionRequest(CreateCompletionRequest):
    compression: Any = _compression_field


class ChatCompletionRequest(CreateChatCompletionRequest):
    compression: Any = _compression_field


router = APIRouter(route_class=RouteErrorHandler)


@router.post("/v1/completions", summary="Completion", dependencies=[Depends(stock.authenticate)],
             tags=[stock.openai_v1_tag])
async def create_completion(request: Request, body: CompletionRequest):
    return await _with_compression(request, body, stock.create_completion)


@router.post("/v1/chat/completions", summary="Chat", dependencies=[Depends(stock.authenticate)],
             tags=[stock.openai_v1_tag])
async def create_chat_completion(request: Request, body: ChatCompletionRequest):
    return await _with_compression(request, body, stock.create_chat_completion)


async def _with_compression(request: Request, body, stock_handler):
    try:
        changes = _checked_changes(body.compression, request.app.state.compression)
    except ValueError as e:
        return JSONResponse({"error": {"message": str(e), "type": "invalid_request_error", "param": "compression",
                                       "code": None}}, status_code=400)
    _request_changes.set(changes)
    return await stock_handler(request, body)


def _checked_changes(changes, served: CompressionConfig) -> dict:
    """A request's ``compression`` field as changes to the server's settings, else ValueError saying why not."""
    if changes is None:
        return {}
    if not isinstance(changes, dict):
        raise ValueError(f"compression: must be an object of settings, e.g. {{\"ratio\": 0.1}}, got {changes!r}")
    unknown = sorted(changes.keys() - served.as_dict().keys())
    if unknown:
        raise ValueError(f"compression.{unknown[0]}: not a compression setting (those are {', '.join(served.as_dict())})")
    try:
        config = dataclasses.replace(served, **changes)
    except ValueError as e:
        raise ValueError(f"compression.{e}") from None
    if config.compresses and not served.compresses:
        raise ValueError(f"compression: this server's model was loaded without compression (method={served.method!r}, "
                         f"ratio={served.ratio}), so no prompt is observed; start it with a compressing method and ratio")
    return changes


@contextlib.contextmanager
def _stock_loader_builds(factory):
    """llama-cpp-python's server builds its model with ``llama_cpp.Llama(**settings)``
    (``LlamaProxy.load_llama_from_model_settings``); while this is active that builds ``factory``'s."""
    stock_class = llama_cpp.Llama
    llama_cpp.Llama = factory
    try:
        yield
    finally:
        llama_cpp.Llama = stock_class


def create_app(model_settings: ModelSettings, server_settings: Optional[ServerSettings] = None,
               new_turns: str = "reevaluate", **compression) -> FastAPI:
    """llama-cpp-python's app serving ``model_settings``' model as a ``pyuncomp.Llama`` compressed with
    ``compression`` (keyword arguments of ``CompressionConfig``; a bad value raises ``ValueError``).
    Its completion routes take a ``compression`` field and report the cache in ``usage.compression``.
    ``new_turns``: ``"reevaluate"`` (default) evaluates each request's prompt afresh, ``"recall"``
    evaluates only what it adds to the history the cache's copy holds (``ServedLlama``)."""
    if new_turns not in ("reevaluate", "recall"):
        raise ValueError(f"new_turns: must be 'reevaluate' or 'recall' for a server, got {new_turns!r}")
    config = CompressionConfig(**compression)
    # ours replace the stock routes of the same paths, in the stock module's router itself: that module
    # serves one app per process anyway (its model and settings are module globals)
    ours = {route.path for route in router.routes}
    stock.router.routes[:] = [route for route in stock.router.routes if route.path not in ours]
    with _stock_loader_builds(partial(ServedLlama, new_turns=new_turns, **config.as_dict())):
        app = stock.create_app(server_settings=server_settings or ServerSettings(), model_settings=[model_settings])
    app.state.compression = config
    app.include_router(router)
    return app
