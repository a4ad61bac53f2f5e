"""`queuectl serve`: Prometheus metrics, a JSON API and a dashboard over one store.

The server is the standard library's `http.server` with a small thread pool (see
`server.py`); the API (`api.py`) calls the same Queue methods as the CLI; the
dashboard is one HTML page with plain JavaScript and CSS (`static/`), shipped in
the wheel, so it works offline.
"""

from __future__ import annotations

from .server import DEFAULT_PORT, ServeOptions, is_loopback, make_server

__all__ = ["DEFAULT_PORT", "ServeOptions", "is_loopback", "make_server"]
