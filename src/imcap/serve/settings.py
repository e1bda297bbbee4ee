"""The service's batching and limits, kept apart from app.py so that `imcap --help` imports no web framework."""
from __future__ import annotations

from dataclasses import dataclass, field

from imcap.errors import ImcapError


@dataclass
class ServeSettings:
    """Batching and limits of the service (each field is an `imcap serve` flag)."""

    max_batch: int = field(default=16, metadata={"help": "most images in one model call (1: no micro-batching)"})
    max_wait_ms: float = field(default=10.0, metadata={"help": "longest wait, in ms, for a batch to fill"})
    max_queue: int = field(default=256, metadata={"help": "most images waiting for the model; more: 503"})
    max_upload_mb: float = field(default=10.0, metadata={"help": "largest request body in MB; larger: 413"})
    max_pixels: int = field(default=25_000_000, metadata={"help": "most pixels per image (decompression bombs); more: 413"})
    max_images: int = field(default=16, metadata={"help": "most images in one request; more: 413"})
    timeout: float = field(default=30.0, metadata={"help": "seconds a request may take once uploaded; longer: 504"})
    max_beam_size: int = field(default=10, metadata={"help": "largest beam_size and n a request may ask for"})
    max_caption_length: int = field(default=50, metadata={"help": "largest max_length a request may ask for"})
    api_key: str | None = field(default=None, metadata={"cli": False})

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_pixels", "max_images", "max_beam_size", "max_caption_length"):
            if getattr(self, name) < 1:
                raise ImcapError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_upload_mb", "timeout"):
            if not getattr(self, name) > 0:
                raise ImcapError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.max_wait_ms >= 0:
            raise ImcapError(f"--max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        if self.api_key == "":
            raise ImcapError("IMCAP_API_KEY is set but empty; unset it or give it a value")
