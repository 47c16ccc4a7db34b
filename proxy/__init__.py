"""nmbrs-proxy: an authenticating reverse proxy that keeps OAuth tokens alive for legacy apps."""

__version__ = "0.1.0"
