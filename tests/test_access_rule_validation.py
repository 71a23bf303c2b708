"""Issue 11, finding 12: every ``[access]`` rule list of ``silo.toml`` is checked at load, and a
rule that can never match anyone is a ConfigError naming its key (instead of silently denying)."""

from __future__ import annotations

from pathlib import Path

import pytest

from silobridge.core.errors import ConfigError
from silobridge.silo_agent.config import RPCS, load_silo_config

KEYS = (*RPCS, "query")
NEVER_MATCHES = [
    '["bible", "*"]',  # neither a spiffe:// glob nor org:
    '["org:bible/"]',  # an organization rule with an empty role
    '["spiffe://testnet/clients/*"]',  # a role no certificate has
    '["spiffe://testnet/org:bible/*"]',
]


def _config(tmp_path: Path, key: str, rules: str) -> Path:
    others = "\n".join(f'{other} = ["org:bible"]' for other in KEYS if other != key)
    path = tmp_path / "silo.toml"
    path.write_text(
        f"""
[silo]
name = "kjv"
model = "static-64"
[server]
insecure = true
[access]
{others}
{key} = {rules}
"""
    )
    return path


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("rules", NEVER_MATCHES)
def test_a_rule_that_can_never_match_is_refused_naming_its_key(
    tmp_path: Path, key: str, rules: str
) -> None:
    with pytest.raises(ConfigError, match=rf"\[access\] {key}: invalid rule"):
        load_silo_config(_config(tmp_path, key, rules))


@pytest.mark.parametrize(
    "rules",
    [
        '["spiffe://testnet/client/*", "org:bible", "org:bible/client"]',
        '["spiffe://testnet/*/alice", "spiffe://*"]',
        '["org:acme/research"]',  # an organization whose name holds a slash
    ],
)
def test_rules_that_can_match_load(tmp_path: Path, rules: str) -> None:
    for key in KEYS:
        access = load_silo_config(_config(tmp_path, key, rules)).access
        loaded = access.query if key == "query" else access.rules[key]
        assert len(loaded) == rules.count('"') // 2
