"""Models: image encoders and caption decoders."""
from imcap.models.caption_model import CaptionModel, ModelArgs, build_model
from imcap.models.encoders import ImageEncoder, build_encoder
from imcap.models.show_tell import ShowTell

__all__ = ["CaptionModel", "ImageEncoder", "ModelArgs", "ShowTell", "build_encoder", "build_model"]
