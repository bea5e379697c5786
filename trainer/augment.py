"""DINO multi-crop augmentation: 2 global crops and N local crops of one image.

The recipe of ``dinov2/data/augmentations.py``: random resized crop (bicubic) and flip;
colour jitter (0.4, 0.4, 0.2, 0.1) with p=0.8; grayscale p=0.2; Gaussian blur p=1.0 on
the first global crop, p=0.1 plus solarisation p=0.2 on the second, p=0.5 on local crops.
(The official ``GaussianBlur`` wrapper passes ``1 - p`` to ``RandomApply``, which inverts
these probabilities; the probabilities here are the ones the DINO/BYOL recipe states.)
Randomness is torch's global generator: callers seed it per sample.
"""
from __future__ import annotations

from PIL import Image
from torch import Tensor
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BICUBIC = transforms.InterpolationMode.BICUBIC


def gaussian_blur(p: float) -> transforms.RandomApply:
    return transforms.RandomApply([transforms.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=p)


class DataAugmentationDINO:
    def __init__(self, global_crops_scale: tuple[float, float], local_crops_scale: tuple[float, float],
                 local_crops_number: int, global_crops_size: int = 224, local_crops_size: int = 98) -> None:
        self.local_crops_number = local_crops_number
        self.global_crops_size = global_crops_size
        self.local_crops_size = local_crops_size
        self.geometric_global = transforms.Compose([
            transforms.RandomResizedCrop(global_crops_size, scale=tuple(global_crops_scale), interpolation=BICUBIC),
            transforms.RandomHorizontalFlip(p=0.5),
        ])
        self.geometric_local = transforms.Compose([
            transforms.RandomResizedCrop(local_crops_size, scale=tuple(local_crops_scale), interpolation=BICUBIC),
            transforms.RandomHorizontalFlip(p=0.5),
        ])
        color_jittering = transforms.Compose([
            transforms.RandomApply([transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ])
        normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.global_transfo1 = transforms.Compose([color_jittering, gaussian_blur(1.0), normalize])
        self.global_transfo2 = transforms.Compose([
            color_jittering, gaussian_blur(0.1), transforms.RandomSolarize(threshold=128, p=0.2), normalize,
        ])
        self.local_transfo = transforms.Compose([color_jittering, gaussian_blur(0.5), normalize])

    def __call__(self, image: Image.Image) -> dict[str, list[Tensor]]:
        image = image.convert("RGB")
        g1 = self.global_transfo1(self.geometric_global(image))
        g2 = self.global_transfo2(self.geometric_global(image))
        local = [self.local_transfo(self.geometric_local(image)) for _ in range(self.local_crops_number)]
        return {"global_crops": [g1, g2], "local_crops": local}
