"""FastAPI app over one collection: search and activate over HTTP, plus a web page at ``/``.

Thin: requests are validated here (size, token, content), everything else is the library's. Writes
(activation) are serialised by the collection; searches run in parallel in the server's thread pool.
No path from a request ever reaches the filesystem: uploads are stored under names the server makes.
"""
from __future__ import annotations

import hmac
import io
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image

from .. import __version__
from ..collection import Collection
from ..errors import ActiveIndexError
from ..imageio import load_image, sha256_bytes

__all__ = ["ServiceConfig", "create_app"]


@dataclass(frozen=True)
class ServiceConfig:
    """Service settings."""

    token: str | None = None  # bearer token required by write endpoints (None: writes disabled)
    threshold: float = 0.4  # a query is a copy when its best match's descriptor cosine is >= this (README)
    max_upload_bytes: int = 20 * 1024 * 1024
    max_files: int = 16  # images per search request
    default_k: int = 5


def _safe_name(filename: str | None) -> str:
    """A client's file name reduced to a harmless label (never used as a path as given)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename or "upload").name)[:64].strip("._")
    return stem or "upload"


def create_app(collection: Collection, config: ServiceConfig = ServiceConfig()) -> FastAPI:
    """The app. ``collection`` must be trained; activated files go to ``COLLECTION/activated``."""
    app = FastAPI(title="activeindex", version=__version__,
                  description="Image copy detection with active indexing: search and activate images.")
    bearer = HTTPBearer(auto_error=False)
    uploads, activated_dir = collection.root / "uploads", collection.root / "activated"

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if config.token is None:
            raise HTTPException(403, "writes are disabled on this server (started without a token)")
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), config.token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    async def read_upload(upload: UploadFile) -> bytes:
        data = await upload.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise HTTPException(413, f"{_safe_name(upload.filename)}: larger than {config.max_upload_bytes} bytes")
        return data

    @app.exception_handler(ActiveIndexError)
    async def library_error(request: Request, error: ActiveIndexError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/v1/status")
    def status() -> dict:
        info = collection.info()
        return {k: info[k] for k in ("factory", "nlist", "nprobe", "codec_fingerprint", "images", "active",
                                     "passive", "ntotal", "model")} | {"version": __version__,
                                                                       "threshold": config.threshold,
                                                                       "writes": config.token is not None}

    @app.post("/v1/search")
    async def search(images: list[UploadFile] = File(...), k: int = Form(config.default_k)) -> dict:
        if not 1 <= k <= 100:
            raise HTTPException(422, "k must be between 1 and 100")
        if len(images) > config.max_files:
            raise HTTPException(413, f"at most {config.max_files} images per request")
        named = [(_safe_name(u.filename), await read_upload(u)) for u in images]
        arrays = [collection.extractor.load_bytes(data, name) for name, data in named]
        results = collection.search(arrays, k=k)
        return {"threshold": config.threshold, "results": [
            {"filename": name, "is_copy": bool(matches) and matches[0].similarity >= config.threshold,
             "matches": [_match(m) for m in matches]} for (name, _), matches in zip(named, results)]}

    @app.post("/v1/activate", dependencies=[Depends(require_token)])
    async def activate(image: UploadFile = File(...)) -> Response:
        data = await read_upload(image)
        collection.extractor.load_bytes(data, _safe_name(image.filename))  # sniff and validate first
        path = uploads / f"{sha256_bytes(data)[:16]}-{_safe_name(image.filename)}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        report = collection.activate([path], activated_dir)
        if report.failed:
            raise HTTPException(400, report.failed[0][1])
        record = report.records[0] if report.records else _existing(collection, data)
        return FileResponse(record.activated_path, media_type="image/png",
                            filename=f"{Path(_safe_name(image.filename)).stem}.png",
                            headers={"X-Image-Id": str(record.id), "X-PSNR": f"{record.psnr:.2f}"})

    @app.get("/v1/images/{image_id}")
    def image_record(image_id: int) -> dict:
        return _public(_record(collection, image_id))

    @app.get("/v1/images/{image_id}/activated")
    def activated_file(image_id: int) -> FileResponse:
        record = _record(collection, image_id)
        if record.activated_path is None:
            raise HTTPException(404, f"image {image_id} is a passive reference: it has no activated file")
        return FileResponse(record.activated_path, media_type="image/png")

    @app.get("/v1/images/{image_id}/thumbnail")
    def thumbnail(image_id: int) -> Response:
        record = _record(collection, image_id)
        try:
            image = Image.fromarray(load_image(record.activated_path or record.original_path))
        except ActiveIndexError as e:
            raise HTTPException(404, f"image {image_id}: file no longer readable") from e
        image.thumbnail((256, 256))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return Response(buffer.getvalue(), media_type="image/jpeg")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return resources.files(__package__).joinpath("static/index.html").read_text()

    return app


def _match(match) -> dict:
    return {"id": match.id, "filename": Path(match.original_path).name, "distance": match.distance,
            "similarity": match.similarity, "activated": match.activated_path is not None}


def _record(collection: Collection, image_id: int):
    record = collection.catalog.get([image_id]).get(image_id)
    if record is None:
        raise HTTPException(404, f"no image with id {image_id}")
    return record


def _public(record) -> dict:
    """A record without server paths: file names only."""
    data = record.to_dict()
    data["original_filename"] = Path(data.pop("original_path")).name
    activated = data.pop("activated_path")
    data["activated_filename"] = Path(activated).name if activated else None
    return data


def _existing(collection: Collection, data: bytes):
    """The record of an upload that was already registered (activation is idempotent)."""
    record = _record(collection, collection.catalog.find_sha256(sha256_bytes(data)))
    if record.activated_path is None:
        raise HTTPException(409, f"this image is already registered as passive reference {record.id}")
    return record
