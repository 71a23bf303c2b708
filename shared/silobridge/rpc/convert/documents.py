"""Protobuf <-> domain for a silo's admin surface: documents, receipts, migration plans."""

from __future__ import annotations

from collections.abc import Sequence

from silobridge.core.documents import DeleteReceipt, Document, WriteReceipt
from silobridge.core.migration import MigrationPlan
from silobridge.rpc.convert.queries import space_from_proto, space_to_proto
from silobridge.v1 import silo_pb2


def documents_to_proto(documents: Sequence[Document]) -> silo_pb2.WriteDocumentsRequest:
    return silo_pb2.WriteDocumentsRequest(
        documents=[
            silo_pb2.Document(doc_id=doc.doc_id, text=doc.text, metadata=dict(doc.metadata))
            for doc in documents
        ]
    )


def documents_from_proto(message: silo_pb2.WriteDocumentsRequest) -> list[Document]:
    """The batch as sent; the silo checks each document before it stores any."""
    return [
        Document(doc_id=doc.doc_id, text=doc.text, metadata=dict(doc.metadata))
        for doc in message.documents
    ]


def write_receipt_to_proto(receipt: WriteReceipt) -> silo_pb2.WriteDocumentsResponse:
    return silo_pb2.WriteDocumentsResponse(
        inserted=receipt.inserted,
        updated=receipt.updated,
        unchanged=receipt.unchanged,
        document_count=receipt.document_count,
    )


def write_receipt_from_proto(message: silo_pb2.WriteDocumentsResponse) -> WriteReceipt:
    return WriteReceipt(
        inserted=message.inserted,
        updated=message.updated,
        unchanged=message.unchanged,
        document_count=message.document_count,
    )


def delete_receipt_to_proto(receipt: DeleteReceipt) -> silo_pb2.DeleteDocumentsResponse:
    return silo_pb2.DeleteDocumentsResponse(
        deleted=receipt.deleted,
        missing=list(receipt.missing),
        document_count=receipt.document_count,
    )


def delete_receipt_from_proto(message: silo_pb2.DeleteDocumentsResponse) -> DeleteReceipt:
    return DeleteReceipt(
        deleted=message.deleted,
        missing=tuple(message.missing),
        document_count=message.document_count,
    )


def migration_plan_to_proto(plan: MigrationPlan) -> silo_pb2.PlanMigrationResponse:
    return silo_pb2.PlanMigrationResponse(
        current=space_to_proto(plan.current),
        target=space_to_proto(plan.target),
        documents=plan.documents,
        sample_documents=plan.sample_documents,
        sample_seconds=plan.sample_seconds,
        documents_per_second=plan.documents_per_second,
        estimated_seconds=plan.estimated_seconds,
        disk_bytes=plan.disk_bytes,
    )


def migration_plan_from_proto(message: silo_pb2.PlanMigrationResponse) -> MigrationPlan:
    return MigrationPlan(
        current=space_from_proto(message.current),
        target=space_from_proto(message.target),
        documents=message.documents,
        sample_documents=message.sample_documents,
        sample_seconds=message.sample_seconds,
        documents_per_second=message.documents_per_second,
        estimated_seconds=message.estimated_seconds,
        disk_bytes=message.disk_bytes,
    )
