"""Test settings for the sparsity math: quick, deterministic hypothesis runs."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "sparsity",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
