"""The built-in web app, served by the Main App from static files inside the package."""

from __future__ import annotations

from streamplat.web.controllers import web_router

__all__ = ["web_router"]
