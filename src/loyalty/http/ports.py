"""What the HTTP plumbing needs from the domains, as narrow ports: the application wires the
implementations in (``app.state``), so this package never imports a domain."""

from __future__ import annotations

from typing import Protocol

from loyalty.http.principal import Principal


class Authenticator(Protocol):
    """Turns an Authorization header into a principal (auth.service.Authenticator)."""

    async def authenticate(self, authorization: str | None, deadline: float | None = None) -> Principal: ...
