"""The docs against the code: every setting documented with its default, no unknown variable in
docs/configuration.md, and every relative link in the Markdown files resolving (file and
heading)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"
ENV_EXAMPLE = ROOT / ".env.example"
OTHER_VARIABLES = "## Other variables"

VARIABLE = re.compile(r"\bAUDIT_[A-Z0-9_]+")
ASSIGNMENT = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)
ACTIVE_ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$", re.MULTILINE)
CODE_SPAN = re.compile(r"`[^`\n]*`")

# Inline links and images, `[text](target "title")` (the text may hold one level of brackets and
# wrap), reference definitions `[label]: target`, and HTML `src`/`href` attributes.
INLINE_LINK = re.compile(r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]*)>?(?:\s+[^)]*)?\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_LINK = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http:, https:, mailto:, ...
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"""<a\s[^>]*\b(?:id|name)\s*=\s*["']([^"']+)["']""")


# -- settings


def env_name(name: str, field: FieldInfo) -> str:
    """The variable a user sets for a field: its validation alias (the first of several), else
    the env prefix and the field's name; in capitals (settings are not case-sensitive)."""
    alias = field.validation_alias or field.alias
    if isinstance(alias, AliasChoices):
        alias = next((c for c in alias.choices if isinstance(c, str)), None)
    if isinstance(alias, str):
        return alias.upper()
    return (str(Settings.model_config.get("env_prefix", "")) + name).upper()


def settings_variables() -> dict[str, str]:
    """Environment variable -> field name, for every field of Settings."""
    return {env_name(name, field): name for name, field in Settings.model_fields.items()}


def section(text: str, heading: str) -> str:
    """The text under a `##` heading, up to the next `##` heading."""
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the Markdown tables in `text`, as lists of cells."""
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set("".join(cells)) <= set("-: "):
            rows.append(cells)
    return [row for row in rows if row[0] not in {"setting", "variable"}]


def shown_default(value: object) -> str:
    """A default as the docs write it: `true`, `10` for 10.0, `` for an empty string."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_setting_is_documented_and_no_unknown_variable_is() -> None:
    variables = settings_variables()
    doc = CONFIGURATION.read_text()
    settings_tables = "\n".join("|".join(r) for r in table_rows(doc[: doc.index(OTHER_VARIABLES)]))
    missing = [v for v in variables if f"`{v}`" not in settings_tables]
    assert not missing, f"settings without a row in configuration.md: {missing}"
    assigned = set(ASSIGNMENT.findall(ENV_EXAMPLE.read_text()))
    missing = [v for v in variables if v not in assigned]
    assert not missing, f"settings missing from .env.example: {missing}"

    others = set(VARIABLE.findall(section(doc, OTHER_VARIABLES)))
    assert not others & set(variables), "settings listed among the other variables"
    tables = "\n".join("|".join(row) for row in table_rows(doc))
    unknown = sorted(set(VARIABLE.findall(tables)) - set(variables) - others)
    assert not unknown, f"configuration.md names variables that are not settings: {unknown}"
    unknown = sorted(assigned - set(variables) - others)
    assert not unknown, f".env.example names variables that are not settings: {unknown}"


def test_documented_defaults_match_the_code() -> None:
    variables = settings_variables()
    fields = Settings.model_fields
    doc = CONFIGURATION.read_text()
    settings_part = doc[: doc.index(OTHER_VARIABLES)]
    wrong = []
    for row in table_rows(settings_part):
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", row[0])
        defaults = re.findall(r"`([^`]*)`", row[1]) or [""] * len(names)
        assert len(names) == len(defaults), f"one default per setting: {row[:2]}"
        for name, written in zip(names, defaults, strict=True):
            if name not in variables:
                continue  # the test above names it
            actual = shown_default(fields[variables[name]].default)
            if written != actual:
                wrong.append(f"configuration.md {name}: {written!r}, the code {actual!r}")
    for name, value in ACTIVE_ASSIGNMENT.findall(ENV_EXAMPLE.read_text()):
        if name not in variables:
            continue
        actual = shown_default(fields[variables[name]].default)
        if value.strip() != actual:
            wrong.append(f".env.example {name}: {value.strip()!r}, the code {actual!r}")
    assert not wrong, "\n".join(wrong)


# -- links


def without_code(text: str) -> str:
    """`text` with fenced blocks and code spans blanked (line numbers kept): no links there."""
    lines, fence = [], ""
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = ""
            lines.append("")
        elif opened:
            fence = opened.group(1)
            lines.append("")
        else:
            lines.append(CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line))
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation but `-` and `_` dropped,
    each space a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file: its headings' slugs (repeats get -1, -2, ...) and the
    ids of its HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in without_code(path.read_text()).splitlines():
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every link in `text` outside code."""
    text = without_code(text)
    found = []
    for pattern in (INLINE_LINK, REFERENCE, HTML_LINK):
        for match in pattern.finditer(text):
            found.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return sorted(found)


def broken(source: Path, target: str) -> str | None:
    """Why a relative link from `source` does not resolve, or None when it does (or is not
    relative)."""
    if not target or SCHEME.match(target):
        return None if target else "empty target"
    path_part, _, anchor = target.partition("#")
    path = (source.parent / unquote(path_part)).resolve() if path_part else source
    if not path.exists():
        return "no such file"
    if anchor and path.suffix == ".md" and unquote(anchor) not in anchors(path):
        return f"no heading #{anchor} in {path.relative_to(ROOT)}"
    return None


def test_relative_links_resolve() -> None:
    files = markdown_files()
    assert all(path.exists() for path in files[:2])
    problems = []
    for source in files:
        for line, target in links(source.read_text()):
            why = broken(source, target)
            if why:
                problems.append(f"{source.relative_to(ROOT)}:{line}: ({target}): {why}")
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_slugs_follow_github() -> None:
    assert slug("Delivery guarantees") == "delivery-guarantees"
    assert slug("Many instances on Redis Cluster") == "many-instances-on-redis-cluster"
    assert slug("`AUDIT_SHARDS`: raise, never lower") == "audit_shards-raise-never-lower"
    assert slug("Dev mode / test-only") == "dev-mode--test-only"
    assert slug("See [the API](api.md) (v1.2)") == "see-the-api-v12"
