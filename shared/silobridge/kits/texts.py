"""A kit's start script and README: what to run, what stays private, what is shared."""

from __future__ import annotations

from silobridge.kits.party import ADAPTER_KEY, Party
from silobridge.security.identity import Role

_SERVE = {
    Role.SILO: "silobridge silo serve --config silo.toml",
    Role.COORDINATOR: "silobridge coordinator serve --config coordinator.toml",
}


def start_script(party: Party) -> str:
    """``start.sh``: check the kit, then serve (a client kit: show the consortium's silos)."""
    config = party.config_name
    command = _SERVE.get(party.role, f"silobridge silos --config {config}")
    return f"""#!/bin/sh
# Start {party.spiffe_id} from this kit. Extra arguments go to the command.
set -eu
cd "$(dirname "$0")"
if [ "${{SILOBRIDGE_SKIP_DOCTOR:-}}" != "1" ]; then
    # The preflight: files, key modes, certificate, ports (peers may still be starting).
    silobridge doctor --config {config} --offline
fi
exec {command} "$@"
"""


def _private(party: Party) -> list[str]:
    items = [f"`{party.key}`: your private key. It was made here and never leaves this machine."]
    if party.role is Role.SILO:
        items += [
            "`data/`: your documents, their vectors and your index. Nothing in it is ever sent.",
            "`silo.toml`: your policy. The coordinator sees only what `Describe` says.",
            "`audit/` and `keys/`: your audit log and its checkpoint key.",
        ]
    if party.role is Role.COORDINATOR:
        items += [
            "`state/adapter-signing.key`: signs every adapter; whoever holds it can make silos "
            "accept an adapter.",
            "`state/`: the registry, anchor sets and adapters; back it up.",
            "`keys/audit.key`: signs the audit log's checkpoints.",
        ]
    return items


def _shared(party: Party) -> list[str]:
    items = [
        f"`{party.csr}`: your certificate request, sent once to the CA operator.",
        f"`{party.cert}`: your certificate (public); peers see it in every TLS handshake.",
    ]
    if party.role is Role.COORDINATOR:
        items.append(
            "`state/adapter-signing.key.pub`: give it to every silo (`silobridge kit install "
            "--adapter-key`)."
        )
    if party.role is Role.SILO:
        items.append(
            "Over the wire: hits (opaque ids, scores, the fields in `disclose_fields`), your "
            "anchor vectors of public texts, your model's space, your audit checkpoint heads."
        )
    return items


def readme(party: Party) -> str:
    config = party.config_name
    steps = [
        f"Send `{party.csr}` to the consortium's CA operator, who checks who it is from and "
        f"signs it: `silobridge pki approve {party.csr} --ca-dir CA` (for a coordinator also "
        "`--allow-coordinator`).",
        "Install what comes back: `silobridge kit install . --cert NAME.crt --ca ca.crt`"
        + (" --adapter-key adapter-signing.key.pub" if party.role is Role.SILO else "")
        + ".",
        f"Read `{config}`: every key is listed; commented keys show their defaults. Every "
        "`EDIT-ME` must be replaced.",
    ]
    if party.role is Role.SILO:
        steps.append(f"Ingest your corpus: `silobridge silo ingest --config {config} FILE`.")
    steps += [
        f"Check it: `silobridge doctor --config {config}` (a table of checks, each with a fix).",
        "Start it: `./start.sh`.",
    ]
    lines = [f"# Startup kit: {party.role.value} `{party.name}` of `{party.org}`", ""]
    lines += [f"Identity: `{party.spiffe_id}`.", "", "## Steps", ""]
    lines += [f"{n}. {text}" for n, text in enumerate(steps, 1)]
    lines += ["", "## What stays private", ""] + [f"- {t}" for t in _private(party)]
    lines += ["", "## What is shared", ""] + [f"- {t}" for t in _shared(party)]
    if party.role is Role.SILO:
        lines += ["", f"The adapter key the silo pins is `{ADAPTER_KEY}`."]
    return "\n".join(lines) + "\n"
