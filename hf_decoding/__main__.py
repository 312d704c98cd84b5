"""`python -m hf_decoding`: the same as the `hf-decoding` command."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
