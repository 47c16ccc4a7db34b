"""What identity services speak, as pure functions and data: the token set every answer is parsed
into, JWT claims (`exp`), RFC 6749 client authentication, PKCE, authorize URLs and token answers
(protocol.py), and the provider dialects (client_credentials.py, nomba.py, nitro.py).

Nothing here does I/O: the grant clients in `proxy.tokens.grants` feed it what the network
gave, and the consent routes live in `proxy.ops.consent`. It imports only `proxy.core`.
"""
