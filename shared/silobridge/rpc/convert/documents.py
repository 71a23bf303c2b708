"""Protobuf <-> domain for live writes to a silo: documents, write and delete receipts."""

from __future__ import annotations

from collections.abc import Sequence

from silobridge.core.documents import DeleteReceipt, Document, WriteReceipt
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
