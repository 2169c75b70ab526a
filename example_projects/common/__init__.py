"""Pieces the example projects share: the classification task with the paper's optimiser recipes
(:mod:`.classification`) and the ImageFolder pipeline (:mod:`.imagefolder`)."""
