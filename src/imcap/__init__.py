"""imcap: train, evaluate and serve image-captioning models."""
from imcap.errors import ImcapError

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import imcap` stays cheap and lower layers never import the API eagerly.
    if name == "Captioner":
        from imcap.captioner import Captioner

        return Captioner
    raise AttributeError(name)


__all__ = ["Captioner", "ImcapError", "__version__"]
