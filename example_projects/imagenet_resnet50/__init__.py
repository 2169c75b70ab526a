"""ImageNet ResNet-50 with the SRigL paper's recipe (ImageFolder layout, multi-GPU DDP)."""
