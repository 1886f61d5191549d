"""``python -m evalkit`` is the ``evalkit`` command."""

from evalkit.ui.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
