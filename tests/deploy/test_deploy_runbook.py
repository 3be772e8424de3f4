"""Every alert links its runbook section (docs/runbook.md), and every section is an alert's.

The link is the `runbook_url` annotation, in deploy/prometheus/alerts.yml and so in the PrometheusRule
(test_deploy_kustomize checks the two are equal); an on-call engineer follows it from the notification.
"""

from __future__ import annotations

import re

import yaml
from deploytools import ALERTS_FILE, REPO_ROOT

RUNBOOK = REPO_ROOT / "docs" / "runbook.md"
PARTS = ("**What it means.**", "**What to check.**", "**What to do.**")


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return anchor.replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """Second-level heading -> its text up to the next one."""
    parts = re.split(r"^## (.+)$", RUNBOOK.read_text(), flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def alerts() -> dict[str, dict[str, str]]:
    rules = yaml.safe_load(ALERTS_FILE.read_text())
    return {
        rule["alert"]: rule.get("annotations", {})
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_every_alert_links_its_own_runbook_section() -> None:
    sections = {github_anchor(title): title for title in runbook_sections()}
    for alert, notes in alerts().items():
        url = notes.get("runbook_url")
        assert url, f"{alert} has no runbook_url annotation"
        path, _, anchor = url.partition("#")
        assert (REPO_ROOT / path).resolve() == RUNBOOK, f"{alert}: {url} is not docs/runbook.md"
        assert sections.get(anchor) == alert, f"{alert}: no section `## {alert}` for #{anchor}"


def test_every_section_is_an_alert_and_says_what_to_do() -> None:
    known = alerts()
    for title, text in runbook_sections().items():
        assert title in known, f"docs/runbook.md has a section for {title}, which is no alert"
        for part in PARTS:
            assert part in text, f"docs/runbook.md, {title}: no {part}"


def test_anchors_are_what_renderers_make() -> None:
    assert github_anchor("EcomTritonDown") == "ecomtritondown"
    assert github_anchor("Worker memory (RocksDB)") == "worker-memory-rocksdb"
