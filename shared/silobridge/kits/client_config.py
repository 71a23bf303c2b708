"""``client.toml`` of a client's kit: every key the client reads, documented."""

from __future__ import annotations

from silobridge.kits.party import Links, Party
from silobridge.kits.render import Key, Table
from silobridge.kits.shared_tables import tls_table


def client_tables(party: Party, links: Links) -> list[Table]:
    return [
        Table(
            "client",
            "Where this client's queries go. Its text is embedded by its own "
            "organization's silo only.",
            [
                Key(
                    "coordinator",
                    links.coordinator or "EDIT-ME.coordinator.example:50050",
                    "host:port of the coordinator.",
                    active=True,
                ),
                Key(
                    "coordinator_name",
                    links.coordinator_name,
                    "Its certificate name; any other server there is refused.",
                    active=True,
                ),
                Key(
                    "home_silo",
                    links.home_silo or "EDIT-ME.home-silo.example:50051",
                    "host:port of your own organization's silo (it embeds your text).",
                    active=True,
                ),
                Key(
                    "home_silo_name",
                    links.home_silo_name or "EDIT-ME",
                    "Its certificate name; the client refuses any other certificate at home_silo.",
                    active=True,
                ),
                Key("timeout_seconds", 30.0, "Deadline of each call.", active=True),
                Key(
                    "insecure",
                    False,
                    "Plaintext without authentication: never outside a throwaway local test.",
                ),
            ],
        ),
        tls_table(party),
    ]
