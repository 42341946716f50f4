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
from vitmsn.processing import (
    AutoFeatureExtractor,
    AutoImageProcessor,
    BatchFeature,
    ViTFeatureExtractor,
    ViTImageProcessor,
    ViTImageProcessorFast,
    ViTImageProcessorPil,
)

__version__ = "0.1.0"

__all__ = [
    "AutoFeatureExtractor",
    "AutoImageProcessor",
    "BaseModelOutput",
    "BaseModelOutputWithPooling",
    "BatchFeature",
    "ImageClassifierOutput",
    "MaskedImageModelingOutput",
    "ViTConfig",
    "ViTForImageClassification",
    "ViTFeatureExtractor",
    "ViTForMaskedImageModeling",
    "ViTImageProcessor",
    "ViTImageProcessorFast",
    "ViTImageProcessorPil",
    "ViTMSNConfig",
    "ViTMSNForImageClassification",
    "ViTMSNModel",
    "ViTModel",
    "to_timm",
]
