"""CIFAR-10 ResNet-18: the SRigL paper's CIFAR recipe (reads the standard python-pickle batches)."""
