"""The inference layers: ``CondensedLinear``, the condensed convolutions, ``ProjectedAttention``,
``CSRLinear`` and ``SemiStructuredLinear``, and the checks a loaded layer passes (``validation.py``)."""
