"""Models: image encoders and caption decoders."""
from imcap.models.attention import ShowAttendTell
from imcap.models.caption_model import CaptionModel, ModelArgs, build_model
from imcap.models.coatt import CoAttention
from imcap.models.encoders import ImageEncoder, build_encoder
from imcap.models.show_tell import ShowTell

__all__ = ["CaptionModel", "CoAttention", "ImageEncoder", "ModelArgs", "ShowAttendTell", "ShowTell", "build_encoder", "build_model"]
