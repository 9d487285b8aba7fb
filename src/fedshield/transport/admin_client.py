"""The admin's client: participant administration (enroll, revoke, ...), rollback, audit export.

A thin layer over :class:`~fedshield.transport.client.CoordinatorClient` (same mutual
TLS, retries and error mapping) for the admin API of a running coordinator. The caller's
kit decides what it may do: an admin kit may do everything here, an auditor kit may
export the audit log and read the privacy report, anything else is refused with 403
(:class:`~fedshield.transport.client.RejectedError`), and the refusal is audited.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fedshield.errors import ProtocolError
from fedshield.identity import Kit, client_ssl_context
from fedshield.transport.client import CoordinatorClient, Credentials

__all__ = ["AdminClient"]


class AdminClient(CoordinatorClient):
    """Talk to a coordinator's admin API with an admin (or auditor) kit.

    Admin calls are not retried: revoking twice is refused the second time, so a
    retried revoke whose first reply was lost would report an error for a success.
    """

    @classmethod
    def for_kit(cls, kit: Kit, base_url: str, **options: Any) -> AdminClient:
        """Return a client that presents ``kit`` to the coordinator at ``base_url``."""
        options = {"max_retries": 0, **options}
        return cls(
            base_url,
            ssl_context=client_ssl_context(kit),
            credentials=Credentials.from_kit(kit),
            **options,
        )

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        content = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if body is not None else None
        response = self._request(method, path, content=content, headers=headers)
        try:
            return response.json()
        except ValueError as exc:
            raise ProtocolError(f"the coordinator sent a malformed reply to {path}") from exc

    @staticmethod
    def _name(name: str) -> str:
        return quote(name, safe="")

    def participants(self) -> list[dict[str, Any]]:
        """Return every participant with its status (``GET /v1/participants``)."""
        data = self._json("GET", "/v1/participants")
        rows: list[dict[str, Any]] = data["participants"]
        return rows

    def enroll(
        self, name: str, certificate_pem: bytes, *, organization: str | None = None
    ) -> dict[str, Any]:
        """Enroll ``name`` by the certificate the federation CA issued from its CSR.

        Only the certificate travels (it is public); the coordinator checks it against
        its CA, records the enrollment and accepts the name from its next request.
        """
        body: dict[str, Any] = {"certificate": certificate_pem.decode("ascii")}
        if organization is not None:
            body["organization"] = organization
        result: dict[str, Any] = self._json(
            "POST", f"/v1/participants/{self._name(name)}/enroll", body
        )
        return result

    def revoke(self, name: str, *, reason: str) -> dict[str, Any]:
        """Revoke every certificate of ``name``; enforced from its next request."""
        result: dict[str, Any] = self._json(
            "POST", f"/v1/participants/{self._name(name)}/revoke", {"reason": reason}
        )
        return result

    def quarantine(self, name: str, *, reason: str) -> dict[str, Any]:
        """Quarantine ``name`` from the next round on."""
        result: dict[str, Any] = self._json(
            "POST", f"/v1/participants/{self._name(name)}/quarantine", {"reason": reason}
        )
        return result

    def release(self, name: str) -> dict[str, Any]:
        """Release a quarantined participant."""
        result: dict[str, Any] = self._json(
            "POST", f"/v1/participants/{self._name(name)}/release", {}
        )
        return result

    def rollback(self, version: int, *, reason: str) -> dict[str, Any]:
        """Make model ``version`` the head the next round starts from."""
        result: dict[str, Any] = self._json(
            "POST", "/v1/models/rollback", {"version": version, "reason": reason}
        )
        return result

    def audit_export(self) -> str:
        """Return every audit entry as JSON lines (admin, auditor)."""
        return self._request("GET", "/v1/audit/export").text

    def privacy(self) -> dict[str, Any]:
        """Return the privacy report (admin, auditor)."""
        result: dict[str, Any] = self._json("GET", "/v1/privacy")
        return result
