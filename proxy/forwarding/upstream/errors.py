"""What can go wrong talking to the upstream, as the forwarder tells the cases apart.

    UpstreamError                 anything that went wrong talking to the upstream
      ConnectError                no connection could be opened: nothing was sent
        ConnectTimeout            ... in time (also a TimeoutError)
        EgressProxyError          ... because the egress proxy refused or failed (it is named)
          EgressProxyTimeout      ... in time
      ReadTimeout                 the upstream went quiet while an answer was awaited
      ProtocolError               the connection broke, or the answer was not HTTP/1.1
"""

from __future__ import annotations


class UpstreamError(Exception):
    """Something went wrong talking to the upstream."""


class ConnectError(UpstreamError):
    """No connection could be opened: nothing was sent."""


class ConnectTimeout(ConnectError, TimeoutError):
    """No connection could be opened in time: nothing was sent."""


class ReadTimeout(UpstreamError, TimeoutError):
    """The upstream sent nothing for `read_timeout` seconds while an answer was awaited."""


class ProtocolError(UpstreamError):
    """The connection broke, or what came back was not an HTTP/1.1 answer."""


class EgressProxyError(ConnectError):
    """The egress proxy refused the request or the tunnel (407, 403, ...) or closed it; the
    message names the proxy (never its credentials) and what it said."""


class EgressProxyTimeout(EgressProxyError, ConnectTimeout):
    """No tunnel through the egress proxy in time."""
