"""ImageNet ViT-B/16 from scratch with the SRigL paper's recipe (uniform sparsity, gamma_sal 0.95)."""
