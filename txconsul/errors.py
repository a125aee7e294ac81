"""
The one exception family of txconsul.

Cores and the state store raise these; each surface (HTTP, DNS, RPC) maps them
to its own errors in one place (``txconsul.http.app`` for HTTP).
"""


class TxConsulError(Exception):
    """Base of every error we mean to show to a client."""

    code = 500


class BadRequest(TxConsulError):
    code = 400


class PermissionDenied(TxConsulError):
    code = 403


class NotFound(TxConsulError):
    code = 404


class MethodNotAllowed(TxConsulError):
    code = 405


class Conflict(TxConsulError):
    code = 409


class TooLarge(TxConsulError):
    code = 413


class NoLeader(TxConsulError):
    code = 500


class ConfigError(Exception):
    """A configuration file or flag that cannot be used; the agent refuses to start."""
