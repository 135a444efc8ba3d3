"""The documented path of the HTTP server: ``headstart.serve.create_app`` (it lives in
:mod:`headstart.deploy.serve`)."""

from .deploy.serve import Limits, create_app

__all__ = ["Limits", "create_app"]
