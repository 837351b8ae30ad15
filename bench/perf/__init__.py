"""``offbench perf`` (``benchmark.py`` runs it, ``render.py`` shows it) and ``offbench perf --gpu-check``
(``gpu_check.py``), from shared timing and memory figures (``measure.py``) and output (``output.py``)."""
