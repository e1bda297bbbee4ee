"""Models: image encoders and caption decoders (every decoder implements `Decoder`, models/decoder.py)."""
from imcap.models.attention import ShowAttendTell
from imcap.models.caption_model import CaptionModel, ModelArgs, build_model
from imcap.models.coatt import CoAttention
from imcap.models.decoder import Decoder
from imcap.models.encoders import ImageEncoder, build_encoder
from imcap.models.show_tell import ShowTell
from imcap.models.transformer import TransformerCaptioner
from imcap.models.updown import UpDown

__all__ = ["CaptionModel", "CoAttention", "Decoder", "ImageEncoder", "ModelArgs", "ShowAttendTell", "ShowTell", "TransformerCaptioner", "UpDown", "build_encoder", "build_model"]
