"""``python -m revenium_ollama_transport``: the ``revenium-ollama`` command."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
