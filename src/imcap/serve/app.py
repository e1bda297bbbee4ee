"""The `imcap serve` web service: captioning and search over HTTP, a web page, micro-batching and limits.

Every error is JSON: `{"error": "<code>", "message": "<one line>"}` with its HTTP status.

Attention maps: a model has them when `captioner.model.decoder.has_attention` is true. The service then
calls `captioner.caption_tensors(images, opts, return_attention=True)`, which must return, per image, a list of
`(caption, logprob, maps)` with `maps` a non-negative tensor (num_words, h, w): one map over the encoder
grid per word of `caption.split()` (further rows, e.g. for <END>, are dropped). Without attention,
`?attention=true` is answered with a 422.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from imcap.captioner import Captioner
from imcap.decoding import DecodeOptions
from imcap.errors import ImcapError
from imcap.serve.batching import MicroBatcher, QueueFull
from imcap.serve.settings import ServeSettings
from imcap.serve.uploads import ApiError, Upload, decode_upload, read_uploads

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


class CaptionKey(NamedTuple):
    """Decoding options of a request; only images with equal keys share a batch."""

    beam_size: int
    n: int
    max_length: int
    attention: bool


class SearchRequest(BaseModel):
    """Body of POST /v1/search."""

    query: str = Field(min_length=1, max_length=1000, description="text to search the images for")
    k: int = Field(default=5, ge=1, le=100, description="number of results")


def has_attention(captioner: Captioner) -> bool:
    """Whether the model's decoder gives per-word attention maps."""
    return captioner.has_attention


def caption_batch(captioner: Captioner, key: CaptionKey, tensors: list[torch.Tensor]) -> list[list[dict]]:
    """Caption a batch of (3, S, S) tensors; per image, JSON-ready captions with scores (and attention)."""
    opts = DecodeOptions(beam_size=key.beam_size, n=key.n, max_length=key.max_length)
    batch = torch.stack(tensors)  # (B, 3, S, S)
    if not key.attention:
        return [[{"caption": c, "score": _score(s)} for c, s in caps] for caps in captioner.caption_tensors(batch, opts)]
    triples = captioner.caption_tensors(batch, opts, return_attention=True)
    return [[{"caption": c, "score": _score(s), "attention": _attention_json(c, maps)} for c, s, maps in caps] for caps in triples]


def _score(logprob: float) -> float | None:
    return round(logprob, 4) if math.isfinite(logprob) else None


def _attention_json(caption: str, maps: torch.Tensor) -> dict:
    """Maps (>= num_words, h, w) -> {"words", "maps"}: one map per word, each scaled to a maximum of 1 for display."""
    words = caption.split()
    maps = maps[: len(words)].detach().float().cpu()  # (num_words, h, w); a map for <END> is dropped
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]  # (num_words, 1, 1)
    return {"words": words, "maps": (maps / peak).mul(1000).round().div(1000).tolist()}


def jsonable(obj: Any) -> Any:
    """`obj` with NaN/inf floats as None and anything JSON cannot hold as a string."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON every error is answered with."""
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


def create_app(captioner: Captioner, settings: ServeSettings | None = None, index: Any = None) -> FastAPI:
    """The FastAPI app serving `captioner` (and `index`, a SearchIndex, when given)."""
    settings = settings or ServeSettings()
    upload_limit = int(settings.max_upload_mb * 1_000_000)
    bearer = HTTPBearer(auto_error=False, description="the key in the server's IMCAP_API_KEY, when it is set")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = MicroBatcher(partial(caption_batch, captioner), settings.max_batch, settings.max_wait_ms, settings.max_queue)
        batcher.start()
        app.state.batcher = batcher
        yield
        await batcher.stop()

    def authorize(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if settings.api_key is None:
            return
        challenge = {"WWW-Authenticate": "Bearer"}
        if creds is None:
            raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <key>' header (the server's IMCAP_API_KEY is set)", challenge)
        if not hmac.compare_digest(creds.credentials.encode(), settings.api_key.encode()):
            raise ApiError(401, "unauthorized", "wrong API key", challenge)

    app = FastAPI(title="imcap", version="1", summary="Image captioning and search", lifespan=lifespan)
    api = [Depends(authorize)]

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{exc.detail}: {request.method} {request.url.path} (the API is described at /docs)"
        return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), message, exc.headers)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:  # the server logs the traceback
        return error_response(500, "internal_error", f"internal error ({exc.__class__.__name__}); see the server log")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", summary="Liveness and queue length")
    async def healthz(request: Request) -> dict:
        batcher: MicroBatcher = request.app.state.batcher
        return {"status": "ok", "queued_images": batcher.queued, "batches_run": batcher.batches_run}

    @app.get("/v1/model", dependencies=api, summary="Model card: options, vocabulary size, training metrics")
    async def model_card() -> dict:
        serving = {**asdict(settings), "has_attention": has_attention(captioner), "search_index": index is not None, "device": str(captioner.device)}
        serving.pop("api_key")
        serving["auth"] = settings.api_key is not None
        return jsonable({**captioner.model_card(), "serving": serving})

    @app.post("/v1/caption", dependencies=api, summary="Caption one or more images", openapi_extra=_CAPTION_BODY)
    async def caption(
        request: Request,
        beam_size: int = Query(1, ge=1, le=settings.max_beam_size, description="beam size (1: greedy)"),
        n: int = Query(1, ge=1, le=settings.max_beam_size, description="captions per image"),
        max_length: int = Query(16, ge=1, le=settings.max_caption_length, description="longest caption in words"),
        attention: bool = Query(False, description="per-word attention maps (models with attention only)"),
    ) -> dict:
        start = time.perf_counter()
        if attention and not has_attention(captioner):
            raise ApiError(422, "attention_unavailable", f"this model ({captioner.model.args.model}) has no attention maps; leave attention off")
        uploads = await read_uploads(request, upload_limit)
        uploaded = time.perf_counter()
        if len(uploads) > settings.max_images:
            raise ApiError(413, "too_many_images", f"{len(uploads)} images in one request; the limit is {settings.max_images}")
        batcher: MicroBatcher = request.app.state.batcher
        try:
            async with asyncio.timeout(settings.timeout):
                tensors, sizes = await run_in_threadpool(_prepare, captioner, uploads, settings.max_pixels)
                prepared = time.perf_counter()
                try:
                    futures = batcher.submit(CaptionKey(beam_size, n, max_length, attention), tensors)
                except QueueFull as exc:
                    raise ApiError(503, "overloaded", f"server busy: {exc}; retry shortly", {"Retry-After": "1"}) from None
                done = await asyncio.gather(*futures)
        except TimeoutError:
            raise ApiError(504, "timeout", f"request took longer than the {settings.timeout:g} s limit") from None
        results = [
            {"filename": up.name, "width": w, "height": h, "captions": d.output, "batch_size": d.batch_size, "queue_ms": round(d.queue_ms, 2), "inference_ms": round(d.run_ms, 2)}
            for up, (w, h), d in zip(uploads, sizes, done)
        ]
        timing = {"total_ms": _ms_since(start), "upload_ms": _ms_since(start, uploaded), "decode_ms": _ms_since(uploaded, prepared)}
        return {"results": results, "timing": timing}

    @app.post("/v1/search", dependencies=api, summary="Text -> the k best images of the loaded search index")
    async def search(body: SearchRequest) -> dict:
        if index is None:
            raise ApiError(501, "no_search_index", "no search index is loaded; start the server with --search-index INDEX")
        start = time.perf_counter()
        try:
            async with asyncio.timeout(settings.timeout):
                hits = await run_in_threadpool(index.query, body.query, body.k)
        except TimeoutError:
            raise ApiError(504, "timeout", f"search took longer than the {settings.timeout:g} s limit") from None
        except ImcapError as exc:
            raise ApiError(422, "bad_query", str(exc)) from None
        results = [{"path": str(path), "score": round(float(score), 4)} for path, score in hits]
        return {"query": body.query, "results": results, "timing": {"total_ms": _ms_since(start)}}

    return app


def _ms_since(start: float, end: float | None = None) -> float:
    """Milliseconds from `start` to `end` (default: now), rounded to 0.01."""
    return round(((time.perf_counter() if end is None else end) - start) * 1000, 2)


def _prepare(captioner: Captioner, uploads: Sequence[Upload], max_pixels: int) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """Decode and resize every upload (raising the first upload's ApiError); tensors (3, S, S) and sizes."""
    tensors, sizes = [], []
    for up in uploads:
        img = decode_upload(up, max_pixels)
        sizes.append(img.size)
        tensors.append(captioner.to_tensor(img))
    return tensors, sizes


_CAPTION_BODY = {
    "requestBody": {
        "required": True,
        "description": "images as multipart files (any field name, several allowed), or one image as the raw body",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def load_search_index(path: str) -> Any:
    """The SearchIndex at `path`, through `imcap.search` (imported only when an index is asked for)."""
    try:
        from imcap.search.index import load_index
    except ImportError as exc:
        raise ImcapError(f"{path}: --search-index needs the imcap.search module, which cannot be imported ({exc})") from None
    return load_index(path)


def run_server(model: str, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, device: str = "auto", search_index: str | None = None) -> None:
    """Load the model (and index) and serve until interrupted."""
    import uvicorn

    captioner = Captioner.load(model, device)
    index = load_search_index(search_index) if search_index else None
    if settings.api_key is None and not _is_loopback(host):
        log.warning("serving on %s without IMCAP_API_KEY: anyone who can reach this port can use the API", host)
    log.info("imcap serve: %s on http://%s:%d/ (max batch %d, wait %g ms)", model, host, port, settings.max_batch, settings.max_wait_ms)
    uvicorn.run(create_app(captioner, settings, index), host=host, port=port, log_level="info")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
