"""Re-ID networks: a torchvision ResNet or MobileNetV2 trunk with last stride 1, pooling, BN necks, FINet."""

from dsfnet.models.backbone import ModelConfig, ReIDNet, ReIDOutput, build_model

__all__ = ["ModelConfig", "ReIDNet", "ReIDOutput", "build_model"]
