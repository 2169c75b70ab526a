"""The C++ CPU kernels: ``csrc/`` (one portable source, compiled once per instruction set), ``variants.py``
(the builds and their flags), ``isa.py`` (the variant this CPU runs), ``build.py`` (the installed library
or a one-time JIT build) and ``loader.py`` (the loaded ops, with the pure-torch fallback)."""
