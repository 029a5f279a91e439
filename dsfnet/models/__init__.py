"""Re-ID networks: a torchvision ResNet trunk with last stride 1, pooling and a BN neck."""

from dsfnet.models.backbone import ModelConfig, ReIDNet, ReIDOutput, build_model

__all__ = ["ModelConfig", "ReIDNet", "ReIDOutput", "build_model"]
