"""The OpenAI-compatible gateway: app factory, routes, errors, the stage pipeline."""

from services.gateway.app import create_app

__all__ = ["create_app"]
