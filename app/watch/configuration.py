"""Each organization's rules as stored (watch_rule_settings, watch_restricted_patients,
watch_relationships), read when they change: every change bumps the organization's version
(migration 0015's triggers), and the detector compares versions on each round. An organization
that never stored a setting runs every rule on its defaults."""

from __future__ import annotations

import logging

import asyncpg
import orjson

from app.watch.evaluate import OrgRules, like_pattern
from app.watch.rules import (
    RULES,
    AfterHoursParams,
    BulkExportParams,
    RuleSetting,
    WatchConfigError,
    rule_setting,
)
from app.watch.sql import (
    CONFIG_VERSION,
    CONFIG_VERSIONS,
    RELATIONSHIPS,
    RESTRICTED_PATIENTS,
    RULE_SETTINGS,
)

log = logging.getLogger(__name__)


async def load_rules(conn: asyncpg.Connection, organization_id: str) -> tuple[int, OrgRules]:
    """An organization's version and rules, read in one snapshot. A stored setting that does not
    pass the checks (written around them) is logged and its rule runs on its defaults."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await conn.fetchval(CONFIG_VERSION, organization_id)
        rows = await conn.fetch(RULE_SETTINGS, organization_id)
        restricted = {
            r["patient_id"]: r["category"]
            for r in await conn.fetch(RESTRICTED_PATIENTS, organization_id)
        }
        relations: dict[str, dict[str, str]] = {}
        for r in await conn.fetch(RELATIONSHIPS, organization_id):
            relations.setdefault(r["principal_id"], {})[r["patient_id"]] = r["relation"]
    settings: dict[str, RuleSetting] = {}
    for row in rows:
        try:
            settings[row["rule"]] = rule_setting(
                row["rule"],
                enabled=row["enabled"],
                severity=row["severity"],
                params=orjson.loads(row["params"]),
            )
        except WatchConfigError as exc:
            log.warning("a stored watch setting is not used, its rule runs on defaults: %s", exc)
    return version or 0, OrgRules(organization_id, settings, restricted, relations)


class RuleBook:
    """The rules of every organization seen, kept current."""

    def __init__(self) -> None:
        self.rules: dict[str, OrgRules] = {}
        self.versions: dict[str, int] = {}

    def __call__(self, organization_id: str) -> OrgRules:
        rules = self.rules.get(organization_id)
        if rules is None:
            rules = self.rules[organization_id] = OrgRules.defaults(organization_id)
        return rules

    async def refresh(self, conn: asyncpg.Connection) -> int:
        """Read again the organizations whose settings changed; how many."""
        stored = {r["organization_id"]: r["version"] for r in await conn.fetch(CONFIG_VERSIONS)}
        changed = [org for org, version in stored.items() if self.versions.get(org) != version]
        for org in changed:
            version, rules = await load_rules(conn, org)
            self.rules[org], self.versions[org] = rules, version
        return len(changed)

    def reach(self) -> int:
        """How far back any organization's windowed rules look, in seconds."""
        default = OrgRules.defaults("").reach
        return max([default, *(rules.reach for rules in self.rules.values())])

    def classifications(self) -> list[str]:
        """The classifications any organization's after-hours rule reads."""
        default = RULES["after_hours"].params()
        assert isinstance(default, AfterHoursParams)
        found: set[str] = set(default.classifications)
        for rules in self.rules.values():
            if rules.after_hours:
                found.update(rules.after_hours_classes)
        return sorted(found)

    def export_patterns(self) -> list[str]:
        """LIKE patterns of every action a bulk export rule reads the details of: the defaults'
        and each organization's own."""
        default = RULES["bulk_export"].params()
        assert isinstance(default, BulkExportParams)
        patterns = set(default.actions)
        for rules in self.rules.values():
            if rules.export is not None:
                patterns.update(rules.export.actions)
        return sorted(like_pattern(p) for p in patterns)
