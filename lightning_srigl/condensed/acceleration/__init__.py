"""``accelerate()``: capture each sparse layer's real call, time its candidates there and keep the fastest
exact one (``accelerate.py``), with its report (``report.py``), the replayed call (``layer_call.py``);
the swap and its inverse ``restore_dense`` (``swap.py``). The timer is ``lightning_srigl/timing.py``."""
