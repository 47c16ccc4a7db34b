"""The OpenAPI 3.1 document of the admin API (proxy.ops.api), served at /_proxy/api/openapi.json.

Kept as data next to the handlers; tests validate it as OpenAPI 3.1 and check every real
answer of the API against the schema it documents, so the two cannot drift apart.
"""

from __future__ import annotations

import copy
from typing import Any, Final

OPENAPI_PATH: Final = "/_proxy/api/openapi.json"

_TIME: Final = {"type": ["string", "null"], "format": "date-time"}
_TEXT_OR_NULL: Final = {"type": ["string", "null"]}

_HEALTH: Final[dict[str, Any]] = {
    "ready": {"type": "boolean", "description": "A request would be served now."},
    "state": {"enum": ["fresh", "stale", "invalid"],
              "description": "The access token: fresh, due for a refresh, or unusable."},
    "link_state": {"enum": ["linked", "failing", "needs_consent", "not_linked",
                            "credentials_refused"]},
    "needs_consent": {"type": "boolean"},
    "last_error": _TEXT_OR_NULL,
    "warnings": {"type": "array", "items": {"enum": [
        "consent_required", "credentials_refused", "refresh_failing", "refresh_token_expiring",
        "no_refresh_token", "no_subscription_key"]}},
}

_SUMMARY: Final[dict[str, Any]] = {
    "name": {"type": "string"},
    "provider": {"enum": ["nmbrs", "client_credentials", "nomba", "nitro"]},
    "prefix": {"type": "string"},
    "upstream": {"type": "string", "format": "uri"},
    "linked": {"type": "boolean"},
    "interactive": {"type": "boolean",
                    "description": "A person links it (consent); else client credentials."},
    **_HEALTH,
    "access_token_expires_at": _TIME,
}

_DETAIL: Final[dict[str, Any]] = {
    **_SUMMARY,
    "client_id": {"type": "string"},
    "scopes_asked": {"type": "array", "items": {"type": "string"}},
    "scopes_granted": {"type": "array", "items": {"type": "string"}},
    "obtained_at": _TIME,
    "last_refresh_at": _TIME,
    "refresh_token_issued_at": _TIME,
    "refresh_token_expires_at": _TIME,
    "failures": {"type": "integer", "minimum": 0},
    "failing_since": _TIME,
    "subscription_key": {"enum": ["page", "config", "missing", None],
                         "description": "Where the key comes from; the key is never shown."},
    "quota": {"type": "object", "additionalProperties": {"type": ["number", "null"]},
              "description": "Counters of shaping, retries, key rotation and caching."},
}


def _object(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": sorted(properties), "properties": properties,
            "additionalProperties": False, **extra}


_SCHEMAS: Final[dict[str, Any]] = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "string"},
                       "description": "Every problem of an invalid configuration file."},
        },
    },
    "ConnectionSummary": _object(_SUMMARY),
    "ConnectionDetail": _object(_DETAIL),
    "ConnectionList": _object({"connections": {
        "type": "array", "items": {"$ref": "#/components/schemas/ConnectionSummary"}}}),
    "Revoked": _object({
        "connection": {"type": "string"},
        "revoked": {"const": True},
        "store_updated": {"type": "boolean", "description": (
            "False: the identity service ended the grant but the store could not be updated; "
            "the tokens it still holds no longer work.")},
    }),
    "Reconnect": _object({
        "connection": {"type": "string"},
        "login_url": {"type": "string", "format": "uri", "description": (
            "Open it in the browser of the person who consents: it starts the login there.")},
    }),
    "SubscriptionKey": _object({"subscription_key": {"type": "string", "minLength": 1,
                                                      "maxLength": 256}}),
    "SubscriptionKeySaved": _object({"connection": {"type": "string"},
                                     "subscription_key": {"const": "page"}}),
    "ReloadOutcome": _object({
        "result": {"enum": ["applied", "unchanged"]},
        "applied": {"type": "array", "items": {"type": "string"},
                    "description": "The configuration keys whose change is in force."},
        "needs_restart": {"type": "array", "items": {"type": "string"},
                          "description": "Changed keys that only a restart applies."},
        "errors": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
    }),
    "Config": {
        "type": "object",
        "required": ["server", "store", "session", "connections", "clients", "admin", "audit"],
        "description": 'The settings in force; every secret is "***" (set) or null.',
    },
}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {
        "schema": {"$ref": "#/components/schemas/Problem"}}}}


def _ok(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}


_NAME: Final = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "The connection's name in the configuration."}
_REFUSED: Final = {"401": _problem("The admin key is missing or wrong."),
                   "403": _problem("Not from an admin network, or from another site.")}
_UNKNOWN: Final = {"404": _problem("No connection of that name.")}
_EMPTY_BODY: Final = {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "maxProperties": 0}}}}

_PATHS: Final[dict[str, Any]] = {
    "/_proxy/api/connections": {"get": {
        "operationId": "listConnections", "summary": "Every connection and its health",
        "responses": {"200": _ok("ConnectionList"), **_REFUSED}}},
    "/_proxy/api/connections/{name}": {"parameters": [_NAME], "get": {
        "operationId": "showConnection", "summary": "One connection in detail",
        "responses": {"200": _ok("ConnectionDetail"), **_REFUSED, **_UNKNOWN}}},
    "/_proxy/api/connections/{name}/revoke": {"parameters": [_NAME], "post": {
        "operationId": "revoke",
        "summary": "End the grant at the identity service and forget it on every replica",
        "requestBody": _EMPTY_BODY,
        "responses": {"200": _ok("Revoked"), **_REFUSED, **_UNKNOWN,
                      "409": _problem("The connection is not linked."),
                      "502": _problem("The identity service did not confirm; nothing changed.")}}},
    "/_proxy/api/connections/{name}/reconnect": {"parameters": [_NAME], "post": {
        "operationId": "reconnect", "summary": "The login URL a person opens to link again",
        "requestBody": _EMPTY_BODY,
        "responses": {"200": _ok("Reconnect"), **_REFUSED, **_UNKNOWN,
                      "409": _problem("Client credentials: nothing for a person to do.")}}},
    "/_proxy/api/connections/{name}/subscription-key": {"parameters": [_NAME], "put": {
        "operationId": "replaceSubscriptionKey",
        "summary": "Replace the subscription key kept with the tokens (every replica uses it)",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/SubscriptionKey"}}}},
        "responses": {"200": _ok("SubscriptionKeySaved"), **_REFUSED, **_UNKNOWN,
                      "400": _problem("Not a subscription key."),
                      "409": _problem("Not linked yet: connect first."),
                      "415": _problem("The body is not application/json."),
                      "503": _problem("The token store refused the write.")}}},
    "/_proxy/api/config": {"get": {
        "operationId": "showConfig", "summary": "The configuration in force, secrets masked",
        "responses": {"200": _ok("Config"), **_REFUSED}}},
    "/_proxy/api/reload": {"post": {
        "operationId": "reload", "summary": "Re-read the configuration file and apply it",
        "requestBody": _EMPTY_BODY,
        "responses": {"200": _ok("ReloadOutcome"), **_REFUSED,
                      "409": _problem("The file is valid but could not be applied."),
                      "422": _problem("The file is invalid: nothing was applied.")}}},
}

_DOCUMENT: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "nmbrs-proxy admin API",
        "version": "1",
        "description": (
            "Operate a running nmbrs-proxy: the connections' health, revoke and reconnect, "
            "subscription keys, the configuration in force, reload. Served under /_proxy/api/ "
            "to the admin networks; with an admin key configured, send it as X-Proxy-Key, "
            "as a bearer token, or as the password of HTTP Basic. Errors are "
            "application/problem+json (RFC 9457)."),
    },
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {
            "adminKey": {"type": "apiKey", "in": "header", "name": "X-Proxy-Key"},
            "adminBearer": {"type": "http", "scheme": "bearer"},
            "adminBasic": {"type": "http", "scheme": "basic"},
        },
    },
    "security": [{}, {"adminKey": []}, {"adminBearer": []}, {"adminBasic": []}],
}


def document() -> dict[str, Any]:
    """A copy: the answer may be changed by its caller, the document stays as it is."""
    return copy.deepcopy(_DOCUMENT)
