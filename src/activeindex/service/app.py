"""FastAPI app over one collection: search and activate over HTTP, plus a web page at ``/``.

Thin: requests are validated here (size, pixels, token, content), everything else is the library's.
Reads are private: records, activated files, thumbnails, jobs and ``/metrics`` need the token, unless the
server is started with ``--public-reads`` / ``--public-metrics`` (a passive reference's thumbnail, never
published, needs it always); ``/v1/search``, ``/v1/status``, ``/healthz`` and the page are public, but a
search without the token names only the copies its verdicts call (decision.py; the candidates below the
threshold are counted, never named) and asks for at most ``max_public_k`` candidates. The evidence overlay
(``POST /v1/images/{id}/overlay``) shows a registered original: the token, always.
The event loop never does CPU work: searches (decode, embed, search) run in a small thread pool, and
activations are jobs (service/jobs.py) in the collection's durable queue, run one at a time by the
collection's job runner process at a lower CPU priority, so searches keep being answered while it activates. Both
are bounded: 503 + Retry-After when full. ``POST /v1/jobs`` queues a job of one or more images and
answers 202 at once (``GET /v1/jobs/{id}`` follows it); ``POST /v1/activate`` queues a job of one image
and waits for it, answering the released file, unless the image is larger than ``sync_max_pixels`` (then: 202).
Limits are enforced before work: the body size while it streams in (and from Content-Length), the
token before an activation's body is read, the pixel count from image headers before decoding. No path
from a request ever reaches the filesystem: uploads get names the server makes.
"""
from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from importlib import resources
from pathlib import Path

import anyio
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .._version import __version__
from ..activation import ActivationConfig, activation_memory
from ..catalog import MAX_ID, Record
from ..collection import Collection
from ..credentials import SigningMaterial
from ..errors import ImageDecodeError
from ..imageio import sha256_bytes, sha256_file, write_atomically
from . import http
from .c2pa import c2pa_router
from .jobs import ActivationWorker, discard_unregistered
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .queue import Job
from .thumbnails import Thumbnails
from .verdicts import current_threshold, overlay_png, public_verdict, verdicts

__all__ = ["ServiceConfig", "create_app"]

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class ServiceConfig:
    """Service settings (limits are per request unless stated)."""

    token: str | None = None  # bearer token required by write endpoints (None: writes disabled)
    threshold: float | None = None  # a copy when the best match's similarity is >= this; None: the collection's
    # (calibrated, else the default; re-read when a calibration is stored meanwhile)
    max_upload_bytes: int = 20 * MiB  # one image file
    max_request_bytes: int = 64 * MiB  # a whole search request, enforced while the body streams in
    max_files: int = 16  # images per search request
    max_request_pixels: int = 64_000_000  # decoded pixels across a request's images, read from their headers
    default_k: int = 5
    max_k: int = 100
    max_public_k: int = 10  # candidates a search without the token may ask for
    search_threads: int = 2  # requests decoded and embedded at once (each holds at most one decoded image)
    max_pending_searches: int = 32  # running or waiting; beyond: 503
    max_pending_activations: int = 4  # activation jobs queued or running; beyond: 503
    sync_max_pixels: int = 4_000_000  # POST /v1/activate waits for images up to this size; larger: 202 + a job
    activation_memory: float = 4e9  # bytes an activation batch may use; an image that needs more is refused (413)
    activation: ActivationConfig = field(default_factory=ActivationConfig)  # the settings of every activation job
    ray: str | None = None  # where jobs activate: None in the worker process, else a Ray address ("local", "auto")
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host header allow-list (DNS-rebinding guard); "*": any
    public_reads: bool = False  # records, activated files and jobs without the token (passive thumbnails never)
    public_metrics: bool = False  # /metrics without the token
    signing: SigningMaterial | None = None  # sign every released file's Content Credentials (C2PA)
    # PEM roots trusted wherever the server reads Content Credentials (C2PA trust anchors): the originals' when it
    # signs (unless `signing` names its own); None: no signer is trusted
    trust_anchors: Path | None = None


def _signing(config: ServiceConfig) -> SigningMaterial | None:
    """The signing material, trusting the server's trust anchors unless it names its own."""
    signing = config.signing
    if signing is None or signing.trust_anchors is not None or config.trust_anchors is None:
        return signing
    return replace(signing, trust_anchors=config.trust_anchors)


class _Searches:
    """Blocking search work off the event loop: ``threads`` at a time, ``limit`` admitted (503 beyond)."""

    def __init__(self, threads: int, limit: int):
        self.threads, self.limit, self.pending = threads, limit, 0
        self._limiter: anyio.CapacityLimiter | None = None  # made on the event loop, at first use

    async def run(self, function, *args):
        if self.pending >= self.limit:
            raise HTTPException(503, f"{self.pending} searches are already queued; retry shortly",
                                headers={"Retry-After": "1"})
        self._limiter = self._limiter or anyio.CapacityLimiter(self.threads)
        self.pending += 1
        try:
            return await anyio.to_thread.run_sync(partial(function, *args), limiter=self._limiter)
        finally:
            self.pending -= 1


def create_app(collection: Collection, config: ServiceConfig = ServiceConfig()) -> FastAPI:
    """The app. ``collection`` must be trained; activated files go to ``COLLECTION/activated``."""
    uploads, activated_dir = collection.root / "uploads", collection.root / "activated"
    worker = ActivationWorker(collection.root, collection.extractor.model_source, str(collection.extractor.device),
                              max_pending=config.max_pending_activations, ray=config.ray, uploads=uploads,
                              signing=_signing(config), memory=config.activation_memory)
    discard = partial(discard_unregistered, collection, worker.queue, uploads)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await anyio.to_thread.run_sync(_remove_partial_uploads, uploads)
        worker.start()  # the collection's runner: this server's, or a stand-in for another server's
        yield
        worker.close()

    app = FastAPI(title="activeindex", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Image copy detection with active indexing: search and activate images.")
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(config.allowed_hosts))
    http.add_error_handlers(app)
    http.add_docs(app)
    searches = _Searches(config.search_threads, config.max_pending_searches)
    thumbnails = Thumbnails()
    metrics = Metrics(collection, worker.queue, lambda: searches.pending)
    metrics.instrument(app)
    bearer = HTTPBearer(auto_error=False)

    def authorised(credentials: HTTPAuthorizationCredentials | None, what: str) -> None:
        if config.token is None:
            raise HTTPException(403, f"{what} are disabled on this server (started without a token)")
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), config.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        authorised(credentials, "writes")

    def require_reader(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        """Records, files and jobs: the token, unless the server was started with --public-reads."""
        if not config.public_reads:
            authorised(credentials, "reads")

    def reader(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> bool:
        """Searches: whether the caller may see every candidate (the token, or --public-reads); a wrong token
        is a 401, none an anonymous search."""
        if credentials is not None or config.public_reads:
            require_reader(credentials)
            return True
        return False

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    @app.get("/v1/status", responses=http.errors(500))
    def status() -> dict:
        info = collection.info()
        threshold, calibrated = current_threshold(collection, config.threshold)
        return {k: info[k] for k in ("factory", "nlist", "nprobe", "codec_fingerprint", "images", "active",
                                     "passive", "removed", "ntotal", "indexed_images", "model")} | {
            "version": __version__, "threshold": threshold, "calibrated": calibrated,
            "calibration": collection.calibration if config.threshold is None else None,
            "writes": config.token is not None,
            "limits": {"max_files": config.max_files, "max_upload_bytes": config.max_upload_bytes,
                       "max_request_pixels": config.max_request_pixels, "max_k": config.max_k,
                       "max_public_k": config.max_public_k}}

    @app.post("/v1/search", responses=http.errors(400, 401, 413, 422, 503),
              max_body_size=config.max_request_bytes, form_limits={"max_files": config.max_files, "max_fields": 4},
              openapi_extra={"security": [{}]})  # the token is optional: anonymous searches name only the copies
    async def search(images: list[UploadFile] = File(...), k: int = Form(config.default_k),
                     evidence: bool = Query(False, description="also where each copy sits in its source's original"),
                     full: bool = Depends(reader)) -> dict:
        """Each image's verdict (decision.py). Without the token, the candidates below the threshold are only
        counted (``below_threshold``): their names stay private."""
        most = config.max_k if full else min(config.max_k, config.max_public_k)
        if not 1 <= k <= most:
            raise HTTPException(422, f"k must be between 1 and {most}" + ("" if full else " without the token"))
        if len(images) > config.max_files:
            raise HTTPException(413, f"at most {config.max_files} images per request")
        named = [await http.read_upload(u, config.max_upload_bytes) for u in images]
        found = await searches.run(verdicts, collection, named, k, config.threshold, config.max_request_pixels,
                                   evidence)
        threshold, calibrated = (found[0].threshold, found[0].calibrated) if found else current_threshold(
            collection, config.threshold)
        return {"threshold": threshold, "calibrated": calibrated, "results": [
            {"filename": name, **public_verdict(collection, v, full)} for (name, _), v in zip(named, found)]}

    @app.post("/v1/images/{image_id}/overlay", response_class=Response, max_body_size=config.max_request_bytes,
              responses={200: {"content": {"image/png": {"schema": http.IMAGE_BODY}},
                               "description": "the image's original, the copy's outline drawn, beside the copy"},
                         **http.errors(400, 401, 403, 404, 413, 422, 503)})
    async def evidence_overlay(image_id: int = PathParam(ge=1, le=MAX_ID, description="an image id from a search"),
                               image: UploadFile = File(..., description="the copy"),
                               credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Response:
        """Where the uploaded copy sits in the registered original: the evidence for a takedown notice, as one
        PNG (the token always: the original is shown, which was never published); 422 when they do not align."""
        authorised(credentials, "overlays")
        named = await http.read_upload(image, config.max_upload_bytes)
        record = await anyio.to_thread.run_sync(_record, collection, image_id)
        return Response(await searches.run(overlay_png, collection, record, named, config.max_request_pixels),
                        media_type="image/png")

    @app.post("/v1/activate", dependencies=[Depends(require_token)], response_class=Response,
              responses={200: {"content": {t: {"schema": http.IMAGE_BODY} for t in http.RELEASED_TYPES.values()},
                               "description": "the released file; headers X-Image-Id, X-PSNR, X-Scaling"},
                         202: http.JOB_RESPONSE, **http.errors(400, 401, 403, 409, 413, 422, 500, 503)},
              max_body_size=config.max_upload_bytes + 64 * 1024,
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["image"],
                  "properties": {"image": http.IMAGE_BODY, **http.SETTINGS_FIELDS}}}}}})
    async def activate(request: Request) -> Response:
        (name, data), settings = await http.one_image(request, config.max_upload_bytes, config.activation)
        [(path, pixels)], _ = await searches.run(_stored_uploads, collection, uploads, [(name, data)],
                                                 config.max_request_pixels, config.activation_memory)
        job = await submit([path], settings)
        if pixels > config.sync_max_pixels:
            return _accepted(job)
        job = await worker.wait(job.id)
        record = await anyio.to_thread.run_sync(_activation_record, collection, job, data)
        released = Path(record.activated_path)
        return FileResponse(released, media_type=_media_type(record), filename=f"{Path(name).stem}{released.suffix}",
                            headers={"X-Image-Id": str(record.id), "X-PSNR": f"{record.psnr:.2f}",
                                     **({"X-Scaling": f"{record.scaling:.3f}"} if record.scaling else {})})

    @app.post("/v1/jobs", dependencies=[Depends(require_token)], status_code=202,
              responses={202: http.JOB_RESPONSE, **http.errors(400, 401, 403, 413, 422, 500, 503)},
              max_body_size=config.max_request_bytes,
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["images"], "properties": {"images": {
                      "type": "array", "items": http.IMAGE_BODY, "minItems": 1, "maxItems": config.max_files,
                      "description": f"at most {config.max_files} images (422 beyond)"}, **http.SETTINGS_FIELDS}}}}}})
    async def submit_job(request: Request) -> JSONResponse:
        named, settings = await http.image_files(request, config.max_files, config.max_upload_bytes, config.activation)
        stored, refused = await searches.run(_stored_uploads, collection, uploads, named, config.max_request_pixels,
                                              config.activation_memory)
        return _accepted(await submit([path for path, _ in stored], settings, refused))

    @app.get("/v1/jobs/{job_id}", response_model=http.JobStatus, responses=http.errors(401, 403, 404, 422),
             dependencies=[Depends(require_reader)])
    async def job_status(job_id: int = PathParam(ge=1, le=MAX_ID, description="a job id from POST /v1/jobs")) -> dict:
        job = await anyio.to_thread.run_sync(worker.queue.get, job_id)
        return await anyio.to_thread.run_sync(_public_job, collection, job)

    async def submit(paths: list[Path], settings: ActivationConfig, refused: list[dict] = ()) -> Job:
        """Queue an activation job of stored uploads (discarded again when it cannot be queued)."""
        try:
            return await worker.submit(paths, activated_dir, settings, refused)
        except BaseException:
            await anyio.to_thread.run_sync(discard, paths)
            raise

    image_id_param = PathParam(ge=1, le=MAX_ID, description="an image id from a search result")

    @app.get("/v1/images/{image_id}", responses=http.errors(401, 403, 404, 422), dependencies=[Depends(require_reader)])
    def image_record(image_id: int = image_id_param) -> dict:
        return _public(_record(collection, image_id))

    @app.delete("/v1/images/{image_id}", dependencies=[Depends(require_token)],
                responses=http.errors(401, 403, 404, 422, 503, 507))
    def remove_image(image_id: int = image_id_param,
                     delete_file: bool = Query(False, description="also delete its activated file")) -> dict:
        """Remove an image (takedown): no search returns it from now on, no job lists it, the server's copy of
        its upload is deleted; it may be registered again."""
        report = collection.remove([image_id], delete_files=delete_file)
        if not report.removed:
            raise HTTPException(404, f"no image with id {image_id}")
        discard([collection.root / report.removed[0].original_path])  # kept while a queued job holds it too
        return {"removed": _public(report.removed[0]), "file_deleted": bool(report.deleted_files)}

    @app.get("/v1/images/{image_id}/activated", response_class=Response, dependencies=[Depends(require_reader)],
             responses={200: {"content": {t: {"schema": http.IMAGE_BODY} for t in http.RELEASED_TYPES.values()}},
                        **http.errors(401, 403, 404, 422)})
    def activated_file(image_id: int = image_id_param) -> Response:
        record = _record(collection, image_id)
        if record.activated_path is None:
            raise HTTPException(404, f"image {image_id} is a passive reference: it has no activated file")
        return FileResponse(_activated_file(record), media_type=_media_type(record))

    @app.get("/v1/images/{image_id}/thumbnail", response_class=Response, dependencies=[Depends(require_reader)],
             responses={200: {"content": {"image/jpeg": {"schema": http.IMAGE_BODY}}},
                        **http.errors(401, 403, 404, 422)})
    async def thumbnail(image_id: int = image_id_param,
                        credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Response:
        """A small JPEG of the released (activated) file; of a passive reference's original only with the token
        (it was never published), even where reads are public. Made in the search pool (bounded), cached."""
        record = await anyio.to_thread.run_sync(_record, collection, image_id)
        if record.activated_path is None:
            authorised(credentials, "reads")
        try:
            data = await searches.run(thumbnails.get, record.activated_path or record.original_path)
        except ImageDecodeError as e:
            raise HTTPException(404, f"image {image_id}: its file is no longer readable on the server") from e
        return Response(data, media_type="image/jpeg")

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {
        "schema": {"type": "string"}}}}, **http.errors(401, 403)})
    def scrape(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Response:
        """Prometheus metrics: requests and latency per route, searches and jobs in flight, jobs by state,
        images live and removed, activation seconds per image (the token, unless --public-metrics)."""
        if not config.public_metrics:
            authorised(credentials, "metrics")
        return Response(metrics.scrape(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(c2pa_router(collection, config, searches.run, require_reader))

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files(__package__).joinpath("static/index.html").read_text()

    @app.get("/favicon.svg", include_in_schema=False)
    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(resources.files(__package__).joinpath("static/favicon.svg").read_bytes(),
                        media_type="image/svg+xml")

    return app


def _stored_uploads(collection: Collection, uploads: Path, named: list[tuple[str, bytes]], max_pixels: int,
                    memory: float) -> tuple[list[tuple[Path, int]], list[dict]]:
    """(In a worker thread.) Validate each upload fully (from its header: an image whose activation would need
    more than ``memory`` bytes; then decoded, one at a time), keep those that pass as
    ``uploads/<sha256 prefix>/<name>`` and refuse the others by name: one bad file never sinks the rest.

    Returns:
        (path, pixels) per upload kept, and ``{"filename", "error"}`` per upload refused, in request order.

    Raises:
        HTTPException: 413 when the request's images hold more than ``max_pixels`` in all; when none passes,
            the first refusal (400 not an image, 413 too large).
    """
    sized, refusals = [], []  # (order, name, data, pixels); (order, status, name, error)
    for order, (name, data) in enumerate(named):
        try:
            sized.append((order, name, data, _upload_pixels(name, data, max_pixels, memory)))
        except (HTTPException, ImageDecodeError) as e:
            refusals.append(_refusal(order, name, e))
    http.check_total(sum(pixels for *_, pixels in sized), max_pixels)
    stored = []
    for order, name, data, pixels in sized:
        try:
            collection.extractor.load_bytes(data, name)  # decoded one at a time: bounded memory
        except ImageDecodeError as e:
            refusals.append(_refusal(order, name, e))
            continue
        stored.append((_stored(uploads, name, data), pixels))
    refusals.sort()
    if not stored:
        _, status, _, error = refusals[0]
        raise HTTPException(status, error)
    return stored, [{"filename": name, "error": error} for _, _, name, error in refusals]


def _upload_pixels(name: str, data: bytes, max_pixels: int, memory: float) -> int:
    """An upload's pixel count from its header; 413 when its activation would need more than ``memory`` bytes."""
    w, h = http.header_size(name, data, max_pixels)
    if activation_memory(w * h) > memory:
        raise HTTPException(413, f"{name}: activating {w}x{h} pixels needs about "
                                 f"{activation_memory(w * h) / 1e9:.1f} GB; this server allows "
                                 f"{memory / 1e9:.1f} GB (--activation-memory): send a smaller image")
    return w * h


def _refusal(order: int, name: str, error: HTTPException | ImageDecodeError) -> tuple[int, int, str, str]:
    """(order, status, name, one-line reason) of an upload refused."""
    if isinstance(error, HTTPException):
        return order, error.status_code, name, str(error.detail)
    return order, 400, name, str(error)


def _stored(uploads: Path, name: str, data: bytes) -> Path:
    """``uploads/<sha256 prefix>/<name>``, written unless it already holds these bytes."""
    path = uploads / sha256_bytes(data)[:16] / name
    if not (path.is_file() and path.stat().st_size == len(data) and sha256_file(path) == sha256_bytes(data)):
        write_atomically(path, lambda f: f.write(data))  # never a partial file, even on a full disk
    return path


def _remove_partial_uploads(uploads: Path) -> None:
    """(At start.) Temp files of uploads cut short by a crash (an upload is written atomically, so these are
    never a job's input)."""
    for path in uploads.glob("*/.*.tmp"):
        path.unlink(missing_ok=True)


def _activation_record(collection: Collection, job: Job, data: bytes) -> Record:
    """(In a worker thread.) The record a one-image job made, or that of the same image registered before."""
    public = _public_job(collection, job)
    if public["failed"]:
        raise HTTPException(400, public["failed"][0]["error"])
    collection.refresh()
    record = Record(**job.result["records"][0]) if job.result["records"] else _existing(collection, data)
    _activated_file(record)
    return record


def _accepted(job: Job) -> JSONResponse:
    """202 with the queued job and its address."""
    return JSONResponse({"id": job.id, "state": job.state, "total": job.total, "done": job.done,
                         "refused": job.refused}, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


def _public_job(collection: Collection, job: Job) -> dict:
    """(In a worker thread.) A job without server paths: its records in public form, file names only, those
    taken down since left out."""
    result = job.result or {"records": [], "skipped": [], "failed": []}
    live = collection.catalog.get([r["id"] for r in result["records"]])
    records = [_public(Record(**r)) for r in result["records"] if r["id"] in live]
    return {"id": job.id, "state": job.state, "total": job.total, "done": job.done, "created_at": job.created_at,
            "updated_at": job.updated_at, "records": records, "refused": job.refused,
            "removed": len(result["records"]) - len(records),
            "skipped": [{"filename": Path(s["path"]).name, "reason": s["reason"]} for s in result["skipped"]],
            "failed": [{"filename": Path(f["path"]).name, "error": f["error"].replace(f["path"], Path(f["path"]).name)}
                       for f in result["failed"]],
            "warnings": [{"filename": Path(w["path"]).name, "warning": w["warning"]}
                         for w in result.get("warnings", [])],
            "error": job.error}


def _record(collection: Collection, image_id: int) -> Record:
    collection.refresh()
    record = collection.catalog.get([image_id]).get(image_id)
    if record is None:
        raise HTTPException(404, f"no image with id {image_id}")
    return record


def _activated_file(record: Record) -> str:
    """The released file's path, checked: a file deleted on the server is a clear 404, not a 500."""
    if not Path(record.activated_path).is_file():
        raise HTTPException(404, f"image {record.id}: its activated file {Path(record.activated_path).name} is "
                                 "missing on the server; the operator must restore it")
    return record.activated_path


def _public(record: Record) -> dict:
    """A record without server paths: file names only."""
    data = record.to_dict()
    data["original_filename"] = Path(data.pop("original_path")).name
    activated = data.pop("activated_path")
    data["activated_filename"] = Path(activated).name if activated else None
    return data


def _existing(collection: Collection, data: bytes) -> Record:
    """The record of an upload that was already registered (activation is idempotent)."""
    image_id = collection.catalog.find_sha256(sha256_bytes(data))
    if image_id is None:
        raise HTTPException(500, "the activation registered nothing; see the server log")
    record = _record(collection, image_id)
    if record.activated_path is None:
        raise HTTPException(409, f"this image is already registered as passive reference {record.id}")
    return record


def _media_type(record: Record) -> str:
    """The released file's media type (records made before formats existed were PNGs)."""
    return http.RELEASED_TYPES[record.format or "png"]
