"""``python -m lightning_srigl`` is the ``lightning-srigl`` command."""

from lightning_srigl.cli import main

if __name__ == "__main__":
    main()
