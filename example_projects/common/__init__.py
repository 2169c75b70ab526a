"""Pieces the example projects share: the classification task with the paper's optimiser recipes
(:mod:`.classification`), the ImageFolder pipeline (:mod:`.imagefolder`) and loaders over in-memory
tensor splits (:mod:`.tensor_splits`)."""
