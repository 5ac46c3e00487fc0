"""The FastAPI application of ``fgsearch serve``: routes and JSON errors (auth, the body cap and the
security headers are :mod:`fgsearch.serve.guard`'s middleware).

Routes (every ``/api/`` route needs ``Authorization: Bearer TOKEN`` when the server has a token):

* ``POST /api/search``: JSON body (:class:`SearchRequest`), or ``multipart/form-data`` with a
  ``query`` field (the same JSON) and an ``image`` file (a query image, decoded by the indexer's
  guarded decoder). Answers ``{"query", "results", "offset", "k", "more", "notices", ...}`` where
  ``results`` are ``fgsearch query --json`` results.
* ``GET /api/images/{id}``: metadata and every region; ``/file``: the original bytes;
  ``/thumb?size=N``: a JPEG thumbnail. Images are addressed by catalog id only.
* ``GET /api/status``: ``fgsearch status --json`` plus the server's limits.
* ``GET /healthz`` (no auth), ``GET /`` the page, ``/static/*`` its files, ``/docs`` the OpenAPI
  page (Swagger UI served from the ``fastapi-offline`` package: no CDN, works offline).

Errors are ``{"status": CODE, "error": "one line"}``, plus ``"field"`` (the request's field at
fault, e.g. ``"filters.min_score"``) when one is: 400 bad input or image, 401 missing or wrong
token, 404 unknown image or route, 409 the library cannot answer (empty, no regions), 413 a body
over the limit, 422 a malformed request, 500 an unexpected fault (logged), 503 the vector store
failed (a Qdrant server unreachable), or the server is busy decoding other images (its decoded-pixel
budget stayed full for ``decode_wait_s``; with ``Retry-After``).
"""

from __future__ import annotations

import io
import json
import logging
import os
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from fgsearch._version import __version__
from fgsearch.errors import BusyError, FgsearchError, ImageError, InputError, LibraryError
from fgsearch.serve.engine import NotFoundError, SearchService, ServeSettings
from fgsearch.serve.guard import Guard
from fgsearch.serve.guard import error_response as _error

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


# ---- request schema -------------------------------------------------------------------------
class FiltersIn(BaseModel):
    """The CLI's filters: --path, --under, --taken-after/before, --modified-after/before, --min-score."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(default=None, description="Only paths matching this glob (e.g. '*/2024/*').")
    under: str | None = Field(default=None, description="Only paths under this folder (on the server).")
    taken_after: str | None = Field(default=None, description="EXIF capture time on or after YYYY-MM-DD[THH:MM].")
    taken_before: str | None = None
    modified_after: str | None = None
    modified_before: str | None = None
    min_score: float | None = None


class WeightsIn(BaseModel):
    """Fusion weights; ``global`` and ``region`` left out take the query kind's defaults (as in the CLI)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    global_: float | None = Field(default=None, alias="global")
    region: float | None = None
    negative: float = 0.5


class SearchRequest(BaseModel):
    """A search: text and/or an image (``image_id`` of a library image, or an uploaded file)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, description="What to find; any length (up to 248 tokens are read).")
    negative: str | None = Field(default=None, description="Push down images that match this text (--not).")
    image_id: int | None = Field(default=None, description="Query by a library image ('more like this').")
    box: list[float] | None = Field(
        default=None,
        min_length=4,
        max_length=4,
        description="With an image: query by this region x1,y1,x2,y2 (normalised).",
    )
    by: Literal["image", "region"] = "image"
    k: int = Field(default=20, description="Results per page (at most the server's max_k).")
    offset: int = Field(default=0, ge=0, description="Skip this many results (paging).")
    filters: FiltersIn = Field(default_factory=lambda: FiltersIn())
    weights: WeightsIn = Field(default_factory=lambda: WeightsIn())
    text_path: Literal["short", "long", "box"] | None = None


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            "{field} {got!r} is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM", field=name, got=value
        ) from None


def _to_query(req: SearchRequest, image: Any) -> Any:
    from fgsearch.boxes import Box
    from fgsearch.search import Filters, FusionWeights, SearchQuery

    f = req.filters
    return SearchQuery(
        text=req.text,
        image=image,
        box=Box(*req.box) if req.box is not None else None,
        negative=req.negative or None,
        k=req.k,
        by=req.by,
        filters=Filters(
            path_glob=f.path or None,
            path_prefix=os.path.abspath(os.path.expanduser(f.under)) if f.under else None,  # as ingest stores paths
            captured_after=_time(f.taken_after, "filters.taken_after"),
            captured_before=_time(f.taken_before, "filters.taken_before"),
            modified_after=_time(f.modified_after, "filters.modified_after"),
            modified_before=_time(f.modified_before, "filters.modified_before"),
            min_score=f.min_score,
        ),
        weights=FusionWeights(global_=req.weights.global_, region=req.weights.region, negative=req.weights.negative),
        text_path=req.text_path,
    )


# ---- errors ---------------------------------------------------------------------------------
# An InputError names the parameters at fault by the library's names; the API words it with the
# request's JSON fields (dotted inside ``filters`` and ``weights``; ``image`` is the multipart file).
API_FIELDS = {
    "filters.path_glob": "filters.path",
    "filters.path_prefix": "filters.under",
    "filters.captured_after": "filters.taken_after",
    "filters.captured_before": "filters.taken_before",
    "weights.global_": "weights.global",
}


def api_field(field: str) -> str:
    """The HTTP API's name for a library parameter (see :data:`API_FIELDS`)."""
    return API_FIELDS.get(field, field)


def _status_of(e: FgsearchError) -> int:
    if isinstance(e, NotFoundError):
        return 404
    if isinstance(e, (InputError, ImageError)):
        return 400
    if isinstance(e, LibraryError):
        return 409
    if isinstance(e, BusyError):
        return 503
    return 500


def _validation_message(errors: Any) -> str:
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{where or 'request'}: {first.get('msg', 'invalid')}" + (
        f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    )


# ---- the application ------------------------------------------------------------------------
def create_app(service: SearchService) -> FastAPI:
    """The application over an open service (closed when the application shuts down)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        yield
        service.close()

    app = FastAPI(
        title="fgsearch",
        description="Search a library of images by text, image or region (FG-CLIP).",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load Swagger UI / ReDoc from a CDN: blank offline
        redoc_url=None,
    )
    _add_error_handlers(app)
    _add_server_routes(app, service)
    _add_search_route(app, service)
    _add_image_routes(app, service)
    _add_page(app)
    _add_docs(app)
    _add_middleware(app, service.settings)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"status", "error"}``: the library's typed errors by kind, validation 422,
    the vector store 503, anything else 500 (logged, never its text)."""

    @app.exception_handler(FgsearchError)
    async def _fg_error(_: Request, e: FgsearchError) -> JSONResponse:
        retry = {"Retry-After": str(e.retry_after)} if isinstance(e, BusyError) else None
        if isinstance(e, InputError) and e.field is not None:  # worded with the request's fields
            return _error(_status_of(e), e.worded(api_field), retry, field=api_field(e.field))
        return _error(_status_of(e), str(e), retry)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(e.errors()))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        from fgsearch.indexes import IndexBackendError

        if isinstance(e, IndexBackendError):
            return _error(503, str(e))
        logger.exception("unexpected error")
        return _error(500, f"internal error ({type(e).__name__}); the server log has the details")


def _add_server_routes(app: FastAPI, service: SearchService) -> None:
    @app.get("/healthz", tags=["server"], summary="Liveness (no token needed; reveals nothing)")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/api/status", tags=["server"], summary="Counts, model, backend, limits")
    def status() -> JSONResponse:
        return JSONResponse(service.status())


# the search body is read by hand (JSON or multipart); OpenAPI is told both shapes
SEARCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string", "description": "a SearchRequest as JSON"},
                        "image": {"type": "string", "format": "binary"},
                    },
                    "required": ["image"],
                }
            },
        },
    }
}


def _add_search_route(app: FastAPI, service: SearchService) -> None:
    @app.post(
        "/api/search",
        tags=["search"],
        summary="Search by text, image upload, image id and/or box",
        openapi_extra=SEARCH_BODY,
    )
    async def search(request: Request) -> JSONResponse:
        req, upload = await _read_search(request, service.settings.max_upload_bytes)
        if upload is None and req.image_id is None:
            hits, info, more = await run_in_threadpool(service.search, _to_query(req, None), req.offset)
        else:
            hits, info, more = await run_in_threadpool(_search_by_image, service, req, upload)
        return JSONResponse(_search_answer(req, upload is not None, hits, info, more))


def _search_by_image(service: SearchService, req: SearchRequest, upload: bytes | None) -> Any:
    """A search whose query image (an upload or a library image) holds its share of the server's
    decoded-pixel budget from before it is decoded until the search is done with it."""
    service.check(_to_query(req, _NOT_DECODED), req.offset)  # a refused query decodes nothing
    with service.decoding() as reserve:
        return _decode_and_search(service, req, upload, reserve)


_NOT_DECODED = object()  # the query image, in checks made before it is decoded


def _decode_and_search(service: SearchService, req: SearchRequest, upload: bytes | None, reserve: Any) -> Any:
    # a function of its own: the decoded image is freed when it returns, before the budget is given back
    if upload is not None:
        image = service.decode_upload(upload, reserve)
    else:
        assert req.image_id is not None  # _search_by_image is called with an upload or an image id
        image = service.image_for_query(req.image_id, reserve)
    return service.search(_to_query(req, image), req.offset)


async def _read_search(request: Request, max_upload: int) -> tuple[SearchRequest, bytes | None]:
    """The search request from a JSON body, or from a multipart form's ``query`` field and its
    ``image`` file (read up to one byte over ``max_upload``, so that the decoder can refuse it)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload: bytes | None = None
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=2, max_part_size=256 * 1024)
        raw_query = form.get("query") or "{}"
        file = form.get("image")
        if file is None or isinstance(file, str):
            raise InputError("a multipart search needs an 'image' file field (and optionally a 'query' field)")
        upload = await file.read(max_upload + 1)
        if not isinstance(raw_query, str):
            raise InputError("the 'query' field must be JSON text, not a file")
    elif ctype in ("application/json", ""):
        raw_query = (await request.body()).decode("utf-8", errors="replace") or "{}"
    else:
        raise InputError(f"unsupported content type {ctype!r}: send application/json or multipart/form-data")
    try:
        req = SearchRequest.model_validate(json.loads(raw_query))
    except json.JSONDecodeError as e:
        raise RequestValidationError([{"loc": ("body",), "msg": f"not JSON ({e.msg})"}]) from None
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None
    if upload is not None and req.image_id is not None:
        raise InputError("give image_id or upload an image, not both")
    return req, upload


def _search_answer(req: SearchRequest, uploaded: bool, hits: Any, info: Any, more: bool) -> dict[str, Any]:
    """The search response: the query as understood, the results (as ``fgsearch query --json``),
    paging, notices and timings."""
    return {
        "query": {
            "text": req.text,
            "image": "upload" if uploaded else None,
            "image_id": req.image_id,
            "box": req.box,
            "not": req.negative,
            "by": req.by,
            "k": req.k,
            "offset": req.offset,
            "text_path": info.text_path,
        },
        "results": [h.to_dict() for h in hits],
        "offset": req.offset,
        "k": req.k,
        "more": more,
        "notices": info.notices,
        "timing_ms": {"encode": round(info.encode_ms, 1), "search": round(info.search_ms, 1)},
    }


def _add_image_routes(app: FastAPI, service: SearchService) -> None:
    @app.get("/api/images/{image_id}", tags=["images"], summary="Metadata and every region of an image")
    def image(image_id: int) -> JSONResponse:
        return JSONResponse(service.image(image_id))

    @app.get("/api/images/{image_id}/file", tags=["images"], summary="The original file (verified by hash)")
    def image_file(image_id: int) -> Response:
        data, _ = service.file_bytes(image_id)
        return Response(
            data,
            media_type=_mime(data),
            headers={"Content-Security-Policy": "sandbox", "Cache-Control": "private, max-age=3600"},
        )

    @app.get("/api/images/{image_id}/thumb", tags=["images"], summary="A JPEG thumbnail, EXIF-rotated, cached")
    def image_thumb(image_id: int, size: int = Query(256, ge=1, le=4096)) -> Response:
        return Response(
            service.thumbnail(image_id, size),
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=3600"},
        )


def _add_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _add_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI over ``/openapi.json``, its script and style served from the installed
    ``fastapi-offline`` package (part of ``fgsearch[serve]``), so the page works without a network.
    Without that package ``/docs`` is a 404 naming it (the schema stays at ``/openapi.json``)."""
    import importlib.util

    if importlib.util.find_spec("fastapi_offline") is None:

        @app.get("/docs", include_in_schema=False)
        def no_docs() -> JSONResponse:
            return _error(
                404,
                "the API page needs the fastapi-offline package: pip install 'fgsearch[serve]' "
                "(the OpenAPI schema is at /openapi.json)",
            )

        return
    from importlib.resources import files

    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse

    assets = Path(str(files("fastapi_offline") / "static"))
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )


def _add_middleware(app: FastAPI, s: ServeSettings) -> None:
    """The guard (token, body cap, security headers) and, with ``--cors``, one allowed origin."""
    app.add_middleware(Guard, token=s.token, max_body=s.max_body_bytes)
    if s.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=[s.cors],
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )


def _mime(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
    except Exception:  # the bytes are the indexed file (hash-checked): only the label is unknown
        return "application/octet-stream"
    return Image.MIME.get(fmt or "", "application/octet-stream")
