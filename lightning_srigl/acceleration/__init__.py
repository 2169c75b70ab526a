"""``accelerate()``: capture each sparse layer's real call, time its candidates there and keep the fastest
exact one (``accelerate.py``), with its report (``report.py``); the swap and its inverse ``restore_dense``
(``swap.py``). The timer is ``lightning_srigl/timing.py``, the replayed call ``lightning_srigl/layer_call.py``."""
