"""Reading uploads safely: a capped body, multipart or raw, content sniffing and a pixel cap per image."""
from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from imcap.data.images import DECODE_ERRORS, upright, to_rgb
from imcap.errors import ImcapError

# Leading bytes of each accepted format, and PIL's name for it.
SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"WEBP", 8, "WEBP"),  # after "RIFF" and a 4-byte length
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)
PNM_MAGIC = (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")


class ApiError(Exception):
    """An error answered as JSON `{"error": code, "message": message}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


@dataclass
class Upload:
    """One uploaded file: its name (for messages) and bytes."""

    name: str
    data: bytes


def too_large(limit: int) -> ApiError:
    """The 413 for a body over `limit` bytes."""
    return ApiError(413, "payload_too_large", f"request body is larger than the upload limit of {limit / 1e6:g} MB")


async def capped_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body in chunks; ApiError 413 as soon as it passes `limit` bytes (or says it will)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise too_large(limit)
        yield chunk


async def read_uploads(request: Request, limit: int) -> list[Upload]:
    """The images of a request: every file of a multipart form, or else the whole raw body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        data = b"".join([chunk async for chunk in capped_stream(request, limit)])
        return [Upload("body", data)]
    parser = MultiPartParser(request.headers, capped_stream(request, limit), max_files=10_000, max_fields=100)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc.message}") from None
    try:
        uploads = []
        for field, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise ApiError(422, "unexpected_field", f"form field {field!r} is not a file; "
                               "send images as files and options as query parameters (?beam_size=3)")
            uploads.append(Upload(value.filename or field, await value.read()))
    finally:
        await form.close()
    if not uploads:
        raise ApiError(422, "no_image", "the form holds no file; send images as multipart files (-F image=@photo.jpg)")
    return uploads


def sniff(data: bytes) -> str | None:
    """PIL's format name for the image signature `data` starts with, or None."""
    for magic, offset, name in SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (name != "WEBP" or data.startswith(b"RIFF")):
            return name
    if data[:2] in PNM_MAGIC and data[2:3].isspace():
        return "PPM"
    return None


def decode_upload(upload: Upload, max_pixels: int) -> Image.Image:
    """The upright RGB image in `upload`; ApiError 415 (not an image), 413 (too many pixels) or 422 (corrupt)."""
    name = upload.name
    if not upload.data:
        raise ApiError(422, "empty_image", f"{name}: empty upload (0 bytes)")
    fmt = sniff(upload.data)
    if fmt is None:
        raise ApiError(415, "unsupported_media_type", f"{name}: not an image (content is not JPEG, PNG, GIF, BMP, WebP, TIFF or PNM)")
    try:
        img = Image.open(io.BytesIO(upload.data), formats=[fmt])
    except Image.DecompressionBombError:
        raise _too_many_pixels(name, None, max_pixels) from None
    except (UnidentifiedImageError, *DECODE_ERRORS):
        raise ApiError(422, "corrupt_image", f"{name}: corrupt {fmt} image (header cannot be read)") from None
    width, height = img.size
    if width * height > max_pixels:
        raise _too_many_pixels(name, (width, height), max_pixels)
    if width == 0 or height == 0:
        raise ApiError(422, "corrupt_image", f"{name}: image has zero size ({width}x{height})")
    try:
        img.load()
        return to_rgb(upright(img, Path(name)))
    except DECODE_ERRORS:
        raise ApiError(422, "corrupt_image", f"{name}: corrupt or truncated {fmt} image") from None
    except ImcapError as exc:
        raise ApiError(422, "corrupt_image", str(exc)) from None


def _too_many_pixels(name: str, size: tuple[int, int] | None, max_pixels: int) -> ApiError:
    shown = f"{size[0]}x{size[1]} pixels" if size else "too many pixels"
    return ApiError(413, "too_many_pixels", f"{name}: {shown} is over the limit of {max_pixels} pixels (refused as a possible decompression bomb)")
