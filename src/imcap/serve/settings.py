"""The service's batching and limits, kept apart from app.py so that `imcap --help` imports no web framework."""
from __future__ import annotations

from dataclasses import dataclass

from imcap.config import DeviceOptions, nonempty_error
from imcap.errors import ImcapError
from imcap.options import opt, validate


@dataclass
class ServeSettings:
    """Batching and limits of the service (each field is an `imcap serve` flag)."""

    max_batch: int = opt(16, "most images in one model call (1: no micro-batching)", min=1)
    max_wait_ms: float = opt(10.0, "longest wait, in ms, for a batch to fill", min=0.0)
    max_queue: int = opt(256, "most images waiting for the model; more: 503", min=1)
    max_upload_mb: float = opt(10.0, "largest request body in MB; larger: 413", gt=0.0)
    max_pixels: int = opt(25_000_000, "most pixels per image (decompression bombs); more: 413", min=1)
    max_images: int = opt(16, "most images in one request; more: 413", min=1)
    timeout: float = opt(30.0, "seconds a request may take once uploaded; longer: 504", gt=0.0)
    max_beam_size: int = opt(10, "largest beam_size and n a request may ask for", min=1)
    max_caption_length: int = opt(50, "largest max_length a request may ask for", min=1)
    api_key: str | None = opt(None, "Bearer key (from IMCAP_API_KEY)", cli=False)

    def __post_init__(self) -> None:
        validate(self)
        if self.api_key == "":
            raise ImcapError("IMCAP_API_KEY is set but empty; unset it or give it a value")


@dataclass
class ServeOptions(DeviceOptions):
    """`imcap serve`: where to listen and what to load."""

    model: str = opt("", "run directory, checkpoint file or export folder", required=True)
    search_index: str = opt("", "search index to load for POST /v1/search")
    host: str = opt("127.0.0.1", "address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface)", check=nonempty_error)
    port: int = opt(8000, "TCP port", min=1, max=65535)
