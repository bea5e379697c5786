"""dinoret: image search and dataset hygiene on DINOv2 backbones."""

__version__ = "0.1.0"
