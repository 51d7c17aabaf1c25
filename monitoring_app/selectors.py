"""Reads of the monitoring app."""

from dataclasses import dataclass

from monitoring_app.models import AuditLog
from monitoring_app.services import GENESIS_HASH


@dataclass(frozen=True)
class ChainReport:
    rows_checked: int
    broken_row_id: int | None = None
    reason: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_row_id is None


def audit_chain_verify(*, chunk_size: int = 5000) -> ChainReport:
    """Walk the audit chain in id order and return the first row whose link or content
    does not match. Streams the table in chunks, so memory stays flat at any size."""
    expected_prev = GENESIS_HASH
    checked = 0
    for row in AuditLog.objects.order_by("id").iterator(chunk_size=chunk_size):
        if row.prev_hash != expected_prev:
            return ChainReport(
                checked, row.pk, "its link to the previous row does not match (a row was removed or inserted)"
            )
        if row.compute_hash() != row.row_hash:
            return ChainReport(checked, row.pk, "its content does not match its hash (the row was altered)")
        expected_prev = row.row_hash
        checked += 1
    return ChainReport(checked)
