"""Model factories shared by pre-training, fine-tuning and explanation."""

from .backbone import build_backbone, encoder_state_dict, load_encoder_weights, num_features

__all__ = ["build_backbone", "encoder_state_dict", "load_encoder_weights", "num_features"]
