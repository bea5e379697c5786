"""DINOv2 backbones, their weights, and self-supervised training (imports nothing else of dinoret)."""
