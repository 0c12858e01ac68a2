"""The service's notion of "now": aware UTC datetimes, the only kind stored or compared.

Defined here rather than in `storage.tables` so code outside storage (the API, the workers) can read the time
without importing the schema. It knows nothing of tables or sessions.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)
