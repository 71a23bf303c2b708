"""`silo.toml` loading: strict keys, fail-closed access, actionable errors."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from silobridge.core.errors import ConfigError, InvalidArgument, PermissionDenied
from silobridge.rpc.status import GENERIC_INTERNAL_MESSAGE, status_for
from silobridge.security.identity import PeerIdentity
from silobridge.silo_agent.config import load_silo_config

BASE = """
[silo]
name = "kjv"
model = "static-64"

[tls]
cert = "certs/kjv.crt"
key = "certs/kjv.key"
ca = "certs/ca.crt"
"""

ALICE = PeerIdentity("spiffe://demo/client/alice", "demo", "client", "alice", "bible")
HUB = PeerIdentity("spiffe://demo/coordinator/hub", "demo", "coordinator", "hub", "consortium")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "silo.toml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_silo_config(write(tmp_path, BASE))
    assert config.name == "kjv"
    assert config.data_dir == tmp_path / "data" / "kjv"
    assert config.tls is not None and config.tls.cert == tmp_path / "certs" / "kjv.crt"
    assert config.limits.max_k == 100
    assert not config.server.insecure


def test_missing_access_denies_everyone(tmp_path: Path) -> None:
    config = load_silo_config(write(tmp_path, BASE))
    for rpc in ("describe", "embed", "embed_anchors", "search"):
        assert not config.access.allows(rpc, ALICE)
        assert not config.access.allows(rpc, HUB)
    assert config.access.disclose_fields == ()


def test_prefer_anchors_takes_the_embed_anchors_rule_unless_it_has_its_own(
    tmp_path: Path,
) -> None:
    text = BASE + '[access]\nembed_anchors = ["spiffe://demo/coordinator/*"]\n'
    inherited = load_silo_config(write(tmp_path, text))
    assert inherited.access.allows("prefer_anchors", HUB)
    assert not inherited.access.allows("prefer_anchors", ALICE)
    assert not inherited.receiving.anchor_preferences  # the silo still has to opt in
    own = load_silo_config(write(tmp_path, text + "prefer_anchors = []\n"))
    assert not own.access.allows("prefer_anchors", HUB)
    on = load_silo_config(write(tmp_path, text + "[receiving]\nanchor_preferences = true\n"))
    assert on.receiving.anchor_preferences


def test_access_rules_by_org_and_spiffe_glob(tmp_path: Path) -> None:
    text = (
        BASE + '[access]\nembed = ["org:bible/client"]\nsearch = ["spiffe://demo/coordinator/*"]\n'
    )
    config = load_silo_config(write(tmp_path, text))
    assert config.access.allows("embed", ALICE)
    assert not config.access.allows("embed", HUB)
    assert config.access.allows("search", HUB)
    assert not config.access.allows("search", ALICE)


@pytest.mark.parametrize(
    ("addition", "fragment"),
    [
        ("[limits]\nmax_kk = 5\n", "unknown key(s) in [limits]: max_kk"),
        ("[limits]\nmax_k = true\n", "max_k must be an integer"),
        ("[limits]\nmax_k = 0\n", "max_k must be at least 1"),
        ("[server]\nlisten = 5\n", "listen must be str"),
        ("[surprise]\nx = 1\n", "unknown section(s): surprise"),
        ("[access]\nsearch = [1]\n", "search must be a list of strings"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, addition: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_silo_config(write(tmp_path, BASE + addition))
    assert fragment in caught.value.message


def test_tls_required_unless_insecure(tmp_path: Path) -> None:
    bare = '[silo]\nname = "kjv"\nmodel = "static-64"\n'
    with pytest.raises(ConfigError, match=r"\[tls\]"):
        load_silo_config(write(tmp_path, bare))
    assert load_silo_config(write(tmp_path, bare + "[server]\ninsecure = true\n")).tls is None


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_silo_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_silo_config(write(tmp_path, "[silo\n"))


@given(st.text(max_size=200))
def test_arbitrary_text_is_a_config_or_a_config_error(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "silo.toml"
        path.write_text(text)
        try:
            load_silo_config(path)
        except ConfigError as error:
            assert error.message


def test_error_translation_hides_internals() -> None:
    assert status_for(InvalidArgument("k=0 is outside")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "k=0 is outside",
    )
    assert status_for(PermissionDenied("no"))[0] is grpc.StatusCode.PERMISSION_DENIED
    # A server-side config problem and an unknown bug both reveal nothing to the peer.
    assert status_for(ConfigError("/etc/secret path")) == (
        grpc.StatusCode.INTERNAL,
        GENERIC_INTERNAL_MESSAGE,
    )
    assert status_for(KeyError("internal detail")) == (
        grpc.StatusCode.INTERNAL,
        GENERIC_INTERNAL_MESSAGE,
    )


def test_query_text_refused_and_rerank_depth_bounded_by_default(tmp_path: Path) -> None:
    config = load_silo_config(write(tmp_path, BASE))
    assert config.access.accept_query_text is False
    assert config.limits.max_rerank_depth == 200
    assert config.coordinator is None
    opted_in = load_silo_config(
        write(
            tmp_path,
            BASE + "[access]\naccept_query_text = true\n[limits]\nmax_rerank_depth = 50\n",
        )
    )
    assert opted_in.access.accept_query_text is True
    assert opted_in.limits.max_rerank_depth == 50


@pytest.mark.parametrize(
    ("addition", "fragment"),
    [
        ("[access]\naccept_query_text = 1\n", "accept_query_text must be bool"),
        ("[limits]\nmax_rerank_depth = 0\n", "max_rerank_depth must be at least 1"),
    ],
)
def test_bad_rerank_settings_name_the_key(tmp_path: Path, addition: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_silo_config(write(tmp_path, BASE + addition))
    assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("addition", "key"),
    [
        ('[access]\nsearch = ["*"]\n', "search"),
        ('[access]\nembed = ["org:"]\n', "embed"),
        ('[access]\ndescribe = ["org:bible", "coordinator/*"]\n', "describe"),
        ('[access]\nquery = ["alice"]\n', "query"),
    ],
)
def test_a_rule_that_can_never_match_is_refused_at_load(
    tmp_path: Path, addition: str, key: str
) -> None:
    # A typo must not load as a policy that silently denies (or, worse, reads as allowing).
    with pytest.raises(ConfigError) as caught:
        load_silo_config(write(tmp_path, BASE + addition))
    assert f"[access] {key}: invalid rule" in caught.value.message
