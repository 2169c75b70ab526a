"""Pieces the example projects share: the classification task with the paper's optimiser recipes
(`.classification`), the ImageFolder pipeline (`.imagefolder`) and loaders over in-memory
tensor splits (`.tensor_splits`)."""
