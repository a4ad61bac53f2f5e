"""Makes `python -m queuectl` work."""

from __future__ import annotations

from .cli import main

main()
