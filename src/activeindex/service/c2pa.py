"""The C2PA Soft Binding Resolution API (1.0.0) under ``/c2pa/v1``: Content Credentials tools find the
registered source of an image by its content or by its fingerprint, then fetch the source's manifest store.

- ``POST /matches/byContent``: the image is the request body (``image/*``; other media types and bytes that are
  not an image: 415), decoded, embedded and searched as ``/v1/search`` does, within its limits (413).
- ``GET`` / ``POST /matches/byBinding``: ``alg`` (`binding.ALG`) and ``value``, the image's fingerprint
  (binding.py: 512 float16 numbers, little-endian, base64); another ``alg`` or a malformed value: 400.
- ``GET /manifests/{manifestId}``: the released file's C2PA manifest store as ``application/c2pa``
  (``returnActiveManifest=true``: its active manifest alone); 404 for an image registered without one.
- ``GET /services/supportedAlgorithms``: ``{"watermarks": [], "fingerprints": [{"alg": ALG}]}``.

The matches are the copies of the image's verdict (decision.py, the rule ``/v1/search`` applies, with the
same threshold): the verdict's match first, then any other candidate at or above the threshold, most
similar first, at most ``maxResults`` of them (capped at the service's ``max_k``); none when the image is
not a copy. Without ``endpoint`` (the spec: the manifest is then fetched from this same service). Its
``manifestId`` is the released file's C2PA manifest label (``urn:c2pa:...``) when it was signed, else
``activeindex:<the first 12 hex digits of the codec fingerprint>:<image id>``, for which ``/manifests`` answers
404. Its ``similarityScore`` (`similarity_score`) maps the cosine similarity s onto 0-100 through the
calibrated operating point t, piecewise linearly: 0 at s <= 0 (s = -1 where t <= 0), 50 at s = t, 100 at
s = 1, rounded, yet never across 50: a score is >= 50 exactly when s >= t, and every match has one.

Token: matches are searches, public as ``/v1/search`` is; a manifest is a record read, so it needs the token
unless the server runs with ``--public-reads``; the algorithm list is public (the spec gives it no security).
Invalid parameters are 400 here, as the spec says (the rest of the service answers 422): they are read
from the request by `_arguments` against their OpenAPI declarations, the spec's, so FastAPI never validates
them.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from .. import binding, credentials
from ..collection import Collection
from ..errors import ImageDecodeError
from . import http

__all__ = ["PREFIX", "c2pa_router", "similarity_score", "SoftBindingQuery", "SoftBindingQueryResult",
           "SoftBindingAlgList"]

logger = logging.getLogger(__name__)

PREFIX = "/c2pa/v1"
MAX_GET_QUERY = 8192  # characters of a GET query string; longer: 414, the spec's "use POST"
MAX_QUERY_BODY = 64 * 1024  # bytes of a POST byBinding body (a value is 1368 characters)
_STABLE_ID = re.compile(r"activeindex:([0-9a-f]{12}):([0-9]{1,19})")  # the manifestId of an image without one
_MANIFEST_ID = re.compile(r"[\x21-\x7e]{1,256}")  # what may name a manifest: printable ASCII, no spaces


class SoftBindingQuery(BaseModel):
    """The spec's ``c2pa.softBindingQuery``: the body of ``POST /matches/byBinding``."""

    alg: str = Field(description="the soft binding algorithm and version, from the C2PA list of algorithm names")
    value: str = Field(description="base64 of the soft binding's value, in the algorithm's own format")


class SoftBindingMatch(BaseModel):
    """One item of ``c2pa.softBindingQueryResult``'s ``matches`` (``endpoint`` absent: this service)."""

    manifestId: str = Field(description="the matched image's C2PA manifest label, else activeindex:<codec>:<id>")
    similarityScore: int = Field(ge=0, le=100, description="0-100; >= 50 exactly when the similarity is >= the "
                                                            "copy threshold")


class SoftBindingQueryResult(BaseModel):
    """The spec's ``c2pa.softBindingQueryResult``."""

    matches: list[SoftBindingMatch]


class SoftBindingAlg(BaseModel):
    """One algorithm of ``c2pa.softBindingAlgList``."""

    alg: str


class SoftBindingAlgList(BaseModel):
    """The spec's ``c2pa.softBindingAlgList``."""

    watermarks: list[SoftBindingAlg]
    fingerprints: list[SoftBindingAlg]


class Limits(Protocol):
    """The service settings the routes enforce (`ServiceConfig`'s)."""

    @property
    def max_upload_bytes(self) -> int: ...
    @property
    def max_request_pixels(self) -> int: ...
    @property
    def max_k(self) -> int: ...
    @property
    def threshold(self) -> float | None: ...  # an operator's own threshold; None: the collection's


def _param(name: str, kind: str, description: str, where: str = "query", required: bool = False,
           **schema) -> dict:
    """An OpenAPI parameter, as the spec declares it."""
    return {"name": name, "in": where, "required": required, "description": description,
            "schema": {"type": kind, **schema}}


_ALG_TEXT = "the soft binding algorithm and version, from the C2PA list of algorithm names"
_VALUE = _param("value", "string", "base64 of the soft binding's value (this service: docs/c2pa.md); too long for "
                                   "a URL: use POST", required=True)
_ALG = _param("alg", "string", _ALG_TEXT, required=True)
_MAX_RESULTS = _param("maxResults", "integer", "the most manifest identifiers to return", minimum=1, default=10)
BY_BINDING = [_VALUE, _ALG, _MAX_RESULTS]
BY_CONTENT = [_param("alg", "string", f"{_ALG_TEXT} (optional)"), _MAX_RESULTS,
              _param("hintAlg", "string", "another soft binding algorithm, to aid resolution (not used here)"),
              _param("hintValue", "string", "its value, base64 (not used here)")]
MANIFEST = [_param("returnActiveManifest", "boolean", "only the active manifest (default: the whole manifest store)",
                   default=False),
            _param("manifestId", "string", "a manifestId from a match", where="path", required=True)]
_BINARY = {"type": "string", "format": "binary"}
CONTENT_BODY = {"description": "the image to match (other media types: 415)", "content": {
    **{f"{kind}/*": {"schema": {**_BINARY, "description": f"an asset of type {kind}"}}
       for kind in ("image", "audio", "video", "application", "model")},
    "text/*": {"schema": {"type": "string", "format": "string", "description": "an asset of type text"}}}}
QUERY_BODY = {"required": True, "description": "the soft binding query", "content": {"application/json": {
    "schema": SoftBindingQuery.model_json_schema()}}}


def c2pa_router(collection: Collection, limits: Limits, run: Callable[..., Awaitable],
                require_reader: Callable) -> APIRouter:
    """The API's routes over ``collection``.

    Args:
        collection: the served collection (trained).
        limits: the upload size, pixel count and results limits of the service, and its threshold
            (`ServiceConfig`): a match's similarity is at least the threshold, and scores 50 there.
        run: runs blocking work off the event loop (``run(function, *args)``, 503 when too much waits).
        require_reader: the dependency that checks the token of record reads.
    """
    router = APIRouter(prefix=PREFIX, tags=["C2PA soft binding resolution"])
    offered = binding.defines(collection.extractor.model_id, collection.extractor.preprocessing.to_dict())
    codec = (collection.manifest["codec_fingerprint"] or "")[:12]
    matches = {"response_model": SoftBindingQueryResult, "response_description": "the matches, most similar first"}

    async def resolve(value: str, alg: str, max_results: int) -> dict:
        if alg != binding.ALG or not offered:
            raise HTTPException(400, f"unknown alg; this service resolves {binding.ALG if offered else 'none'} "
                                     f"(GET {PREFIX}/services/supportedAlgorithms)")
        query = binding.decode_binding(value)[None]
        return {"matches": await run(_matches, collection, query, min(max_results, limits.max_k), limits.threshold,
                                     codec)}

    @router.get("/matches/byBinding", operation_id="queryByBinding", **matches,
                responses=http.errors(400, 414, 500, 503), openapi_extra={"parameters": BY_BINDING},
                summary="Returns C2PA Manifest identifiers corresponding to a soft binding.")
    async def by_binding(request: Request) -> dict:
        if len(request.url.query) > MAX_GET_QUERY:
            raise HTTPException(414, f"query longer than {MAX_GET_QUERY} characters; use POST")
        args = _arguments(request, BY_BINDING)
        return await resolve(args["value"], args["alg"], args["maxResults"])

    @router.post("/matches/byBinding", operation_id="queryByLargeBinding", **matches,
                 responses=http.errors(400, 413, 500, 503), max_body_size=MAX_QUERY_BODY,
                 openapi_extra={"parameters": [_MAX_RESULTS], "requestBody": QUERY_BODY},
                 summary="Returns C2PA Manifest identifiers corresponding to a large soft binding value.")
    async def by_large_binding(request: Request) -> dict:
        args = _arguments(request, [_MAX_RESULTS])
        query = _query_body(await request.body())
        return await resolve(query.value, query.alg, args["maxResults"])

    @router.post("/matches/byContent", operation_id="uploadFile", **matches,
                 responses=http.errors(400, 413, 415, 500, 503), max_body_size=limits.max_upload_bytes,
                 openapi_extra={"parameters": BY_CONTENT, "requestBody": CONTENT_BODY},
                 summary="Finds C2PA Manifest identifiers using a digital asset.")
    async def by_content(request: Request) -> dict:
        args = _arguments(request, BY_CONTENT)
        if args["alg"] is not None and (args["alg"] != binding.ALG or not offered):
            raise HTTPException(400, "unknown alg; leave it out, or see GET "
                                     f"{PREFIX}/services/supportedAlgorithms")
        _check_media_type(request.headers.get("content-type"))
        data = await request.body()
        return {"matches": await run(_content_matches, collection, data, min(args["maxResults"], limits.max_k),
                                     limits.threshold, codec, limits.max_request_pixels)}

    @router.get("/manifests/{manifestId}", operation_id="getManifestById", response_class=Response,
                dependencies=[Depends(require_reader)], openapi_extra={"parameters": MANIFEST},
                responses={200: {"content": {"application/c2pa": {"schema": _BINARY}},
                                 "description": "the C2PA manifest store (JUMBF)"},
                           **http.errors(400, 401, 403, 404, 500)},
                summary="Returns a full C2PA Manifest Store or an active C2PA Manifest.")
    def manifest(request: Request) -> Response:
        args = _arguments(request, MANIFEST)
        store = _manifest_store(collection, args["manifestId"], codec)
        if args["returnActiveManifest"]:
            store = credentials.active_manifest(store)
        return Response(store, media_type="application/c2pa")

    @router.get("/services/supportedAlgorithms", operation_id="getSupportedBindings",
                response_model=SoftBindingAlgList, responses=http.errors(500),
                summary="Returns a list of the soft binding algorithms supported by the service.")
    def supported_algorithms() -> dict:
        return {"watermarks": [], "fingerprints": [{"alg": binding.ALG}] if offered else []}

    return router


def similarity_score(similarity: float, threshold: float) -> int:
    """The spec's 0-100 ``similarityScore`` of a cosine similarity, calibrated on the copy threshold.

    Piecewise linear through (lowest, 0), (threshold, 50) and (1, 100), where lowest is 0 (-1 when the
    threshold is <= 0), rounded to an integer but never across 50: >= 50 exactly when similarity >= threshold.

    Example:
        >>> similarity_score(0.7, 0.4), similarity_score(0.4, 0.4), similarity_score(0.2, 0.4)
        (75, 50, 25)
    """
    if similarity >= threshold:
        fraction = 1.0 if threshold >= 1 else (similarity - threshold) / (1 - threshold)
        return int(min(100, max(50, round(50 + 50 * fraction))))
    lowest = 0.0 if threshold > 0 else -1.0
    return int(max(0, min(49, round(50 * (similarity - lowest) / (threshold - lowest)))))


def _arguments(request: Request, declared: list[dict]) -> dict:
    """The declared query and path parameters of a request, converted by their schema (absent: the default);
    400 naming the first one missing or invalid."""
    values = {}
    for parameter in declared:
        name, schema = parameter["name"], parameter["schema"]
        raw = (request.path_params if parameter["in"] == "path" else request.query_params).get(name)
        if raw is None:
            if parameter["required"]:
                raise HTTPException(400, f"{name}: required")
            values[name] = schema.get("default")
            continue
        try:
            values[name] = _convert(raw, schema)
        except ValueError:
            raise HTTPException(400, f"{name}: expected {_rule(schema)}") from None
    return values


def _convert(raw: str, schema: dict) -> str | int | bool:
    """A parameter's text as its schema's type (ValueError when it is not one)."""
    if schema["type"] == "integer":
        value = int(raw)
        if value < schema.get("minimum", value):
            raise ValueError(raw)
        return value
    if schema["type"] == "boolean":
        if raw.lower() not in ("true", "false"):
            raise ValueError(raw)
        return raw.lower() == "true"
    return raw


def _rule(schema: dict) -> str:
    """A schema in words: "an integer >= 1", "true or false"."""
    if schema["type"] == "integer":
        return "an integer" + (f" >= {schema['minimum']}" if "minimum" in schema else "")
    return "true or false" if schema["type"] == "boolean" else "a string"


def _query_body(body: bytes) -> SoftBindingQuery:
    """The JSON ``{"alg", "value"}`` of a POST byBinding; 400 otherwise."""
    try:
        return SoftBindingQuery.model_validate(json.loads(body))
    except (ValueError, RecursionError, ValidationError):  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        raise HTTPException(400, 'the body must be JSON {"alg": string, "value": string}') from None


def _check_media_type(content_type: str | None) -> None:
    """Images only: an ``image/*`` body (or ``application/octet-stream``, or none said); 415 otherwise."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media and not (media.startswith("image/") or media == "application/octet-stream"):
        raise HTTPException(415, "this service matches images: send the image as the body, with an image/* "
                                 "Content-Type")


def _content_matches(collection: Collection, data: bytes, k: int, threshold: float | None, codec: str,
                     max_pixels: int) -> list[dict]:
    """(In a worker thread.) Identify the body as an image (415 otherwise) within the pixel limit (413), then
    decode, embed and search it."""
    try:
        http.check_pixels([("body", data)], max_pixels)
    except ImageDecodeError as e:
        raise HTTPException(415, f"the body is not an image this service can read ({e})") from e
    query = collection.extractor.encode(collection.extractor.load_bytes(data, "body"))
    return _matches(collection, query[None], k, threshold, codec)


def _matches(collection: Collection, query: np.ndarray, k: int, threshold: float | None, codec: str) -> list[dict]:
    """(In a worker thread.) The spec's matches of one (1, d) query: its verdict's copies (decision.py), the
    verdict's match first; ``threshold``: an operator's own, else the collection's."""
    [verdict] = collection.verdicts_for_descriptors(query, k, threshold)
    copies = verdict.copies
    records = collection.catalog.get([m.id for m in copies])
    return [{"manifestId": records[m.id].manifest_id or f"activeindex:{codec}:{m.id}",
             "similarityScore": similarity_score(m.similarity, verdict.threshold)}
            for m in copies if m.id in records]  # an image removed meanwhile has no record


def _manifest_store(collection: Collection, manifest_id: str, codec: str) -> bytes:
    """The manifest store of the released file a manifestId names; 400 for what cannot be one, 404 else."""
    if not _MANIFEST_ID.fullmatch(manifest_id):
        raise HTTPException(400, "a manifestId is 1-256 printable ASCII characters without spaces")
    stable = _STABLE_ID.fullmatch(manifest_id)
    if stable:
        image_id = int(stable[2]) if stable[1] == codec else None
    else:
        image_id = collection.catalog.find_manifest(manifest_id)
    record = collection.catalog.get([image_id]).get(image_id) if image_id else None
    if record is None:
        raise HTTPException(404, "no manifest with this id in this collection")
    if record.manifest_id is None or record.activated_path is None:
        raise HTTPException(404, f"image {record.id} was registered without Content Credentials")
    if not Path(record.activated_path).is_file():
        raise HTTPException(404, f"image {record.id}: its released file is missing on the server; the operator "
                                 "must restore it")
    store = credentials.manifest_store(record.activated_path)
    if store is None:
        raise HTTPException(404, f"image {record.id}: its released file no longer carries its manifest")
    return store
