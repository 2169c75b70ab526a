"""Digits MLP: scikit-learn's bundled 8x8 digits (no download), the default behind ``make demo``."""
