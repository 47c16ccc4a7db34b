"""OAuth protocol helpers (pure) and the consent routes."""
