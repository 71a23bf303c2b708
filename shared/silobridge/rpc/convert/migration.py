"""Protobuf <-> domain for a silo's migration commands and status."""

from __future__ import annotations

from silobridge.core.errors import InvalidArgument
from silobridge.core.migration import MigrationCommand, MigrationState, MigrationStatus
from silobridge.rpc.convert.queries import space_from_proto, space_to_proto
from silobridge.v1 import silo_pb2

_Command = silo_pb2.ControlMigrationRequest.Command
_COMMANDS = {
    MigrationCommand.STATUS: _Command.STATUS,
    MigrationCommand.START: _Command.START,
    MigrationCommand.PAUSE: _Command.PAUSE,
    MigrationCommand.RESUME: _Command.RESUME,
    MigrationCommand.CUTOVER: _Command.CUTOVER,
    MigrationCommand.ROLLBACK: _Command.ROLLBACK,
    MigrationCommand.FINISH: _Command.FINISH,
}


def migration_command_to_proto(
    command: MigrationCommand,
) -> silo_pb2.ControlMigrationRequest.Command.ValueType:
    return _COMMANDS[command]


def migration_command_from_proto(value: int) -> MigrationCommand:
    for command, wire in _COMMANDS.items():
        if wire == value:
            return command
    raise InvalidArgument(f"unknown migration command {value}")


def migration_status_to_proto(status: MigrationStatus) -> silo_pb2.MigrationStatus:
    return silo_pb2.MigrationStatus(
        state=status.state.value,
        source=space_to_proto(status.source),
        target=space_to_proto(status.target) if status.target is not None else None,
        primary=space_to_proto(status.primary),
        documents=status.documents,
        reencoded=status.reencoded,
        documents_per_second=status.documents_per_second,
        eta_seconds=status.eta_seconds,
        cpu_share=status.cpu_share,
        anchors=status.anchors,
        forward_ndcg=status.forward_ndcg,
        backward_ndcg=status.backward_ndcg,
        adapter_agreement=status.adapter_agreement,
        retention_estimate=status.retention_estimate,
        message=status.message,
    )


def migration_status_from_proto(message: silo_pb2.MigrationStatus) -> MigrationStatus:
    try:
        state = MigrationState(message.state)
    except ValueError:
        raise InvalidArgument(f"unknown migration state {message.state!r}") from None
    return MigrationStatus(
        state=state,
        source=space_from_proto(message.source),
        target=space_from_proto(message.target) if message.HasField("target") else None,
        primary=space_from_proto(message.primary),
        documents=message.documents,
        reencoded=message.reencoded,
        documents_per_second=message.documents_per_second,
        eta_seconds=message.eta_seconds,
        cpu_share=message.cpu_share,
        anchors=message.anchors,
        forward_ndcg=message.forward_ndcg,
        backward_ndcg=message.backward_ndcg,
        adapter_agreement=message.adapter_agreement,
        retention_estimate=message.retention_estimate,
        message=message.message,
    )
