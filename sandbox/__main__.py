"""``python -m sandbox``: serve a standalone sandbox (see :mod:`sandbox.cli`)."""

from sandbox.cli import main

if __name__ == "__main__":
    main()
