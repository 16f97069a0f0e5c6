"""The web app: the JSON API (OpenAPI docs at /docs), the web page at /, and their guards.

Every refusal is a 4xx with a one-line JSON body {"error": "..."}; nothing a request sends
can stop the process or change the index.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from histoseek import __version__
from histoseek.errors import HistoseekError
from histoseek.serve.defaults import DEFAULT_K, MAX_K, MAX_SEARCH_K
from histoseek.serve.service import (
    RequestError,
    SearchAnswer,
    SearchOptions,
    SearchService,
    ServiceInfo,
)
from histoseek.slide.defaults import EXCLUDE_CHOICES

#: The page's own files, the only ones served by name.
STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: The page loads nothing from elsewhere, and runs no script it did not come with.
PAGE_POLICY = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'"
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
#: Room for a search form's other fields and multipart boundaries beside the largest upload.
FORM_OVERHEAD = 64 * 1024


@dataclass
class ErrorBody:
    """Every refusal: one line saying why."""

    error: str


ERRORS = {status: {"model": ErrorBody} for status in (400, 403, 404, 413, 415, 422)}


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """A one-line JSON error."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


class BodyLimit:
    """Refuses request bodies over `max_bytes` as they arrive, before they are read whole.

    A declared Content-Length over the limit is refused at once; a body without one is
    counted as it streams in.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"the request body is over the limit of {self.max_bytes:,} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(413, self._message())(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._message())  # FastAPI passes it to the handler
            return message

        await self.app(scope, counted, send)


def _static_files() -> dict[str, bytes]:
    folder = resources.files("histoseek.serve") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_TYPES}


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(service: SearchService) -> FastAPI:
    """The app serving `service`; closing the app closes the service."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    # FastAPI's own /docs and /redoc load their scripts from a CDN; these come with the package.
    app = FastAPIOffline(
        title="histoseek",
        version=__version__,
        description="Content-based search of one histopathology image index. "
        "Local use: there is no authentication.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=service.max_upload_bytes + FORM_OVERHEAD)
    static = _static_files()

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return error_response(error.status, str(error))

    @app.exception_handler(HistoseekError)
    async def failed(request: Request, error: HistoseekError) -> JSONResponse:
        return error_response(500, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(error))

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(error).__name__}: {error}")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(static["index.html"], headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in STATIC_TYPES:
            raise RequestError(404, f"no such file: {name}")
        return Response(static[name], media_type=STATIC_TYPES[name])

    @app.get("/healthz", summary="Liveness check")
    def healthz() -> dict[str, str]:
        """`{"status": "ok"}` while the service runs."""
        return {"status": "ok"}

    @app.get("/api/info", summary="The index, model and backend served")
    def info() -> ServiceInfo:
        """The index's manifest, the model and backend answering, item counts and limits."""
        return service.info()

    @app.post("/api/search", summary="Search with an image or an indexed item", responses=ERRORS)
    def search(
        request: Request,
        image: Annotated[
            UploadFile | None, File(description="An image file to search with.")
        ] = None,
        item: Annotated[
            int | None, Form(description="Or: the id of an indexed item (more like this).")
        ] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K, description="Results wanted.")] = DEFAULT_K,
        search_k: Annotated[
            int | None,
            Form(
                ge=1,
                le=MAX_SEARCH_K,
                description="Annoy candidates to inspect [default: 10000, or k × trees].",
            ),
        ] = None,
        exact: Annotated[
            bool, Form(description="Exact search over the stored embeddings.")
        ] = False,
        exclude_self: Annotated[
            bool,
            Form(
                description="Leave the query out of its own results: the query item, or for "
                "an upload the indexed files with its very bytes."
            ),
        ] = True,
        exclude: Annotated[
            Literal[EXCLUDE_CHOICES] | None,
            Form(description="For an item query: leave out its slide's or patient's items."),
        ] = None,
    ) -> SearchAnswer:
        """The k indexed items most similar to an uploaded image or to an indexed item."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in FORM_TYPES:
            raise RequestError(
                415, f"send a form ({' or '.join(FORM_TYPES)}), not {content_type or 'no body'}"
            )
        if (image is None) == (item is None):
            raise RequestError(400, "send either an image (field 'image') or an item id ('item')")
        if exact and search_k is not None:
            raise RequestError(
                400,
                "search_k sets how far Annoy searches, and exact searches every stored "
                "embedding instead: send one or the other",
            )
        options = SearchOptions(
            k=k, search_k=search_k, exact=exact, exclude_self=exclude_self, exclude=exclude
        )
        if item is not None:
            return service.search_item(item, options)
        data = image.file.read(service.max_upload_bytes + 1)
        return service.search_upload(data, image.filename, options)

    @app.get(
        "/api/items/{item_id}/image",
        summary="An indexed item at full resolution (PNG)",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **ERRORS},
    )
    def item_image(item_id: int) -> Response:
        """The item's image file, decoded and sent as PNG so that any indexed format shows."""
        return Response(service.item_png(item_id), media_type="image/png")

    @app.get(
        "/api/items/{item_id}/thumbnail",
        summary="A thumbnail of an indexed item (JPEG)",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
    )
    def item_thumbnail(item_id: int) -> Response:
        """The item's image fitted into a small square, as JPEG."""
        return Response(service.item_thumbnail(item_id), media_type="image/jpeg")

    @app.get(
        "/api/items/{item_id}/slide",
        summary="A slide tile's slide, with the tile's box (JPEG)",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **ERRORS},
    )
    def item_slide(item_id: int) -> Response:
        """The thumbnail of the slide a tile item comes from, its place outlined; 404 for an
        item that is an image file."""
        return Response(service.slide_overview(item_id), media_type="image/jpeg")

    return app
