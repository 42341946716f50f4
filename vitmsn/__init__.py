"""vitmsn: Vision Transformers trained with Masked Siamese Networks.

The public names match transformers', so that ``from vitmsn import ViTMSNModel`` replaces
``from transformers import ViTMSNModel`` and code and checkpoints keep working.
"""

from vitmsn.config import ViTConfig, ViTMSNConfig
from vitmsn.convert import to_timm
from vitmsn.models.hf import (
    BaseModelOutput,
    BaseModelOutputWithPooling,
    ImageClassifierOutput,
    MaskedImageModelingOutput,
    ViTForImageClassification,
    ViTForMaskedImageModeling,
    ViTModel,
    ViTMSNForImageClassification,
    ViTMSNModel,
)

__version__ = "0.1.0"

__all__ = [
    "BaseModelOutput",
    "BaseModelOutputWithPooling",
    "ImageClassifierOutput",
    "MaskedImageModelingOutput",
    "ViTConfig",
    "ViTForImageClassification",
    "ViTForMaskedImageModeling",
    "ViTMSNConfig",
    "ViTMSNForImageClassification",
    "ViTMSNModel",
    "ViTModel",
    "to_timm",
]
