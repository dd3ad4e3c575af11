"""The HTTP service: a FastAPI app over one collection, and the web page it serves."""
from .app import LOOPBACK_HOSTS, ServiceConfig, create_app

__all__ = ["ServiceConfig", "create_app", "LOOPBACK_HOSTS"]
