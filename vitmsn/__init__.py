"""vitmsn: Vision Transformers trained with Masked Siamese Networks."""
