"""Access rules and the policy base both servers' configs build on; a bad rule fails at load.

A rule is one of:

- a glob over the SPIFFE id, matched with ``fnmatch`` (case-sensitive):
  ``spiffe://demo/client/*``;
- ``org:<O>``: any certificate whose subject O equals ``<O>``;
- ``org:<O>/<role>``: that organization and role. The part after the last ``/`` is read as a
  role only when it names one, so an organization whose own name contains ``/`` still works.

Policies fail closed: an action whose rule list is absent or empty is denied to everyone.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

from silobridge.core.config import Section
from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.security.identity import ROLE_NAMES, SPIFFE_SCHEME, PeerIdentity

ORG_RULE_PREFIX = "org:"
_GLOB_CHARS = frozenset("*?[")


def validate_rule(rule: str) -> str:
    """Return ``rule`` if it can ever match, else raise ``InvalidArgument`` (for policy loaders)."""
    if rule.startswith(ORG_RULE_PREFIX):
        org, _role = _split_org_rule(rule)
        if not org:
            raise InvalidArgument(f"invalid rule {rule!r}: 'org:' needs an organization name")
        if org.endswith("/"):
            raise InvalidArgument(
                f"invalid rule {rule!r}: nothing after the '/'; write 'org:<O>' or 'org:<O>/<role>'"
            )
        return rule
    if not rule.startswith(SPIFFE_SCHEME):
        raise InvalidArgument(
            f"invalid rule {rule!r}: expected a glob over spiffe:// ids, 'org:<O>' "
            "or 'org:<O>/<role>'"
        )
    # spiffe://<consortium>/<role>/<name>: a role segment without glob characters must be a role.
    segments = rule[len(SPIFFE_SCHEME) :].split("/")
    if len(segments) >= 2 and not _GLOB_CHARS & set(segments[1]) and segments[1] not in ROLE_NAMES:
        roles = ", ".join(sorted(ROLE_NAMES))
        raise InvalidArgument(
            f"invalid rule {rule!r}: {segments[1]!r} is not a role ({roles}), so no "
            "certificate can match it"
        )
    return rule


def _split_org_rule(rule: str) -> tuple[str, str | None]:
    body = rule[len(ORG_RULE_PREFIX) :]
    org, slash, maybe_role = body.rpartition("/")
    if slash and maybe_role in ROLE_NAMES:
        return org, maybe_role
    return body, None


def identity_matches(identity: PeerIdentity, rule: str) -> bool:
    """Whether ``identity`` is covered by ``rule``; malformed or empty rules match nothing.

    A glob must start with ``spiffe://``, so a bare ``*`` matches nobody: a typo in a policy
    fails closed instead of admitting everyone.
    """
    if rule.startswith(ORG_RULE_PREFIX):
        org, role = _split_org_rule(rule)
        # An empty organization never matches: a certificate without O is nobody's member.
        if not org or identity.org != org:
            return False
        return role is None or identity.role == role
    if not rule.startswith(SPIFFE_SCHEME):
        return False
    return fnmatch.fnmatchcase(identity.spiffe_id, rule)


def matches_any(identity: PeerIdentity, rules: tuple[str, ...]) -> bool:
    return any(identity_matches(identity, rule) for rule in rules)


def rules_of(section: Section, key: str) -> tuple[str, ...]:
    """The rule list under ``key``, each rule checked; a bad one is a ConfigError naming it."""
    rules = section.strings(key)
    for rule in rules:
        try:
            validate_rule(rule)
        except InvalidArgument as error:
            raise ConfigError(
                f"{section.source}: [{section.name}] {key}: {error.message}"
            ) from None
    return rules


@dataclass(frozen=True)
class RulePolicy:
    """Who may do which action: action -> rules. Shared by the silo's and coordinator's policy."""

    rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def allows(self, action: str, identity: PeerIdentity) -> bool:
        return matches_any(identity, self.rules.get(action, ()))
