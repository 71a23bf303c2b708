"""Audit checkpoint heads on the wire (``RecordAuditHead``, ``ListAuditHeads``)."""

from __future__ import annotations

from silobridge.audit.heads import AuditHead
from silobridge.v1 import coordinator_pb2


def audit_head_to_proto(head: AuditHead) -> coordinator_pb2.AuditHead:
    return coordinator_pb2.AuditHead(
        covers=head.covers,
        head=head.head,
        signature=head.signature,
        public_key=head.public_key,
        recorded_unix=head.recorded_unix,
    )


def audit_head_from_proto(message: coordinator_pb2.AuditHead) -> AuditHead:
    """The head as sent; ``check_head`` validates it where it is recorded or used."""
    return AuditHead(
        covers=message.covers,
        head=message.head,
        signature=message.signature,
        public_key=message.public_key,
        recorded_unix=message.recorded_unix,
    )
