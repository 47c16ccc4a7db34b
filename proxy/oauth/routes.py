"""Consent routes: /_proxy/, /_proxy/login and the callback (being written; see helper brief)."""

from __future__ import annotations

from aiohttp import web

from proxy.config import Settings


def setup_consent(app: web.Application, settings: Settings) -> None:
    """Register the consent pages; filled in by the consent-flow change."""
