"""The HTTP surface the routes share: response models and error bodies (as OpenAPI shows them), the
multipart readers that enforce the upload limits, the JSON error handlers and the offline docs page."""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import swagger_ui_bundle
from fastapi import FastAPI, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import OUTPUT_FORMATS, PRESETS, ActivationConfig, get_preset
from ..errors import (
    ActiveIndexError,
    CollectionLockedError,
    CorruptCollectionError,
    ImageDecodeError,
    InvalidInputError,
    StorageFullError,
)
from ..imageio import image_size
from .queue import UnknownJobError, WorkerBusy, WorkerFailed

logger = logging.getLogger(__name__)

BUSY = "the collection is busy: another process is writing to it; retry in a moment"

class Error(BaseModel):
    """Every error response: one line."""

    detail: str


def errors(*codes: int) -> dict:
    """OpenAPI entries for the error statuses an endpoint may answer."""
    return {code: {"model": Error} for code in codes}


class JobAccepted(BaseModel):
    """A job just queued (202; its ``Location`` header is ``/v1/jobs/{id}``)."""

    id: int
    state: str  # queued, running, done or failed
    total: int  # images in the job
    done: int  # images handled so far
    refused: list[dict]  # {"filename", "error"}: images sent with it that were not queued (not an image, too large)


class JobStatus(JobAccepted):
    """A job and, once done, what it registered (file names only, never server paths)."""

    created_at: str
    updated_at: str
    records: list[dict]  # the images it activated, as GET /v1/images/{id} shows them
    skipped: list[dict]  # {"filename", "reason"}: already registered, or twice in the job
    failed: list[dict]  # {"filename", "error"}
    warnings: list[dict]  # {"filename", "warning"}: a lossy release that lost its cell, credentials not carried
    removed: int  # its records taken down since (DELETE /v1/images/{id}): no longer listed
    error: str | None  # why the job as a whole failed

IMAGE_BODY = {"type": "string", "format": "binary"}
SETTINGS_FIELDS = {  # optional form fields of the activation requests
    "preset": {"type": "string", "enum": ["", *sorted(PRESETS)],
               "description": "activation settings (empty: the server's); robust: also for crops, rotations..."},
    "psnr": {"anyOf": [{"type": "number", "minimum": 20, "maximum": 80}, {"type": "string", "maxLength": 0}],
             "description": "a quality floor in dB: every activated image meets it (its scaling is set per image); "
                            "empty: none"},
    "format": {"type": "string", "enum": ["", *OUTPUT_FORMATS],
               "description": "the released file's format (empty: the server's; auto: the source's)"},
    "quality": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 100}, {"type": "string", "maxLength": 0}],
                "description": "JPEG / WebP quality (empty: the source's, or 95)"}}
RELEASED_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}  # media types of released files
JOB_RESPONSE = {"model": JobAccepted, "description": "queued: follow it at the Location header, /v1/jobs/{id}",
                "headers": {"Location": {"schema": {"type": "string"}, "description": "/v1/jobs/{id}"}}}


def safe_name(filename: str | None) -> str:
    """A client's file name reduced to a harmless label (letters of any script kept; never used as a path)."""
    stem = re.sub(r"[^\w.-]+", "_", Path(filename or "upload").name)[:64].strip("._")
    return stem or "upload"


def add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON ``{"detail": one line}``; request data is never echoed back."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        headers = error.headers
        if error.status_code == 405:  # every method of the path (Starlette names only the first route's)
            headers = {"Allow": ", ".join(sorted({method for route in request.app.router.routes
                                                  if getattr(route, "methods", None)
                                                  and route.path_regex.match(request.url.path)
                                                  for method in route.methods}))}
        return JSONResponse({"detail": str(error.detail)}, status_code=error.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = ["/".join(str(p) for p in e.get("loc", ())[1:]) + f": {e.get('msg', 'invalid')}"
                    for e in error.errors()[:3]]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    @app.exception_handler(ActiveIndexError)
    async def library_error(request: Request, error: ActiveIndexError) -> JSONResponse:
        if isinstance(error, UnknownJobError):
            return JSONResponse({"detail": str(error)}, status_code=404)
        if isinstance(error, StorageFullError):  # the message names server paths
            logger.error("%s", error)
            return JSONResponse({"detail": "server storage full; retry once the operator has freed space"},
                                status_code=507, headers={"Retry-After": "60"})
        if isinstance(error, CollectionLockedError):  # the message names server paths
            logger.warning("%s", error)
            return JSONResponse({"detail": BUSY}, status_code=503, headers={"Retry-After": "5"})
        if isinstance(error, (WorkerBusy, WorkerFailed)):
            return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "5"})
        if isinstance(error, CorruptCollectionError):  # the server's own files: the message names server paths
            logger.error("%s", error)
            return JSONResponse({"detail": "the collection is damaged on the server; see the server log"},
                                status_code=500)
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)


def add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package: works without internet."""
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="activeindex API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")


async def one_image(request: Request, max_bytes: int,
                     default: ActivationConfig) -> tuple[tuple[str, bytes], ActivationConfig]:
    """The single ``image`` file part of a multipart request (read only after the token was checked), and
    the activation settings its optional fields ask for."""
    # a second image part gets our 422 (Starlette's own limit answers 400); + the settings fields
    form = await request.form(max_files=2, max_fields=2 + len(SETTINGS_FIELDS))
    image = form.get("image")
    if not hasattr(image, "read") or len(form.getlist("image")) != 1:
        raise HTTPException(422, "image: send exactly one file in the field 'image'")
    return await read_upload(image, max_bytes), activation_settings(form, default)


async def image_files(request: Request, max_files: int, max_bytes: int,
                  default: ActivationConfig) -> tuple[list[tuple[str, bytes]], ActivationConfig]:
    """The ``images`` file parts of a multipart request (read only after the token was checked), and the
    activation settings its optional fields ask for."""
    form = await request.form(max_files=max_files + 1, max_fields=max_files + 1 + len(SETTINGS_FIELDS))
    images = form.getlist("images")
    if not images or not all(hasattr(image, "read") for image in images):
        raise HTTPException(422, "images: send one or more files in the field 'images'")
    if len(images) > max_files:
        raise HTTPException(422, f"images: at most {max_files} images per request")  # the schema's maxItems
    return [await read_upload(image, max_bytes) for image in images], activation_settings(form, default)


def activation_settings(form, default: ActivationConfig) -> ActivationConfig:
    """The server's settings, or the ``preset`` asked for, with the ``psnr`` floor, ``format`` and ``quality``
    given (an empty field: the default); 422 otherwise."""
    preset = form.get("preset")
    if preset not in (None, "") and preset not in PRESETS:
        raise HTTPException(422, f"preset: one of {sorted(PRESETS)}")
    settings = default if preset in (None, "") else get_preset(preset)
    fields = {"psnr": (float, "a number of dB from 20 to 80"), "quality": (int, "an integer from 1 to 100"),
              "format": (str, f"one of {list(OUTPUT_FORMATS)}")}
    for name, (parse, rule) in fields.items():
        value = form.get(name)
        if value in (None, ""):
            continue
        try:
            settings = dataclasses.replace(settings, **{"output" if name == "format" else name: parse(value)})
        except (ValueError, InvalidInputError):
            raise HTTPException(422, f"{name}: {rule}") from None
    return settings


async def read_upload(upload: UploadFile, max_bytes: int) -> tuple[str, bytes]:
    """(safe name, bytes) of an uploaded file; 413 when it is larger than ``max_bytes``."""
    data = await upload.read(max_bytes + 1)
    name = safe_name(upload.filename)
    if len(data) > max_bytes:
        raise HTTPException(413, f"{name}: larger than {max_bytes} bytes")
    return name, data


def check_pixels(named: list[tuple[str, bytes]], max_pixels: int) -> list[tuple[int, int]]:
    """(width, height) per image; refuses a request whose images would decode to more than ``max_pixels`` in all
    (header sizes only)."""
    sizes = [header_size(name, data, max_pixels) for name, data in named]
    check_total(sum(w * h for w, h in sizes), max_pixels)
    return sizes


def check_total(pixels: int, max_pixels: int) -> None:
    """413 when a request's images hold more than ``max_pixels`` in all."""
    if pixels > max_pixels:
        raise HTTPException(413, f"the images of this request hold {pixels} pixels in all; the limit is "
                                 f"{max_pixels} per request: send fewer or smaller images")


def header_size(name: str, data: bytes, max_pixels: int) -> tuple[int, int]:
    """An image's (width, height) from its header; 413 for a decompression bomb (so many pixels that PIL will
    not even open it), `ImageDecodeError` for what is not an image."""
    try:
        return image_size(data, name)
    except ImageDecodeError as e:
        if isinstance(e.__cause__, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise HTTPException(413, f"{name}: far more pixels than the limit of {max_pixels} per request: send "
                                     "a smaller image") from e
        raise
