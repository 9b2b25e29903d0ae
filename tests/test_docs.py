"""The documentation stays connected to the code: the README is a front page (≤ 250 lines), every "§"
reference in code, configs, scripts and docs names a section of docs/design.md, every relative link of the
README and docs/ points at a file of the repository, and every `ua3dtalk-*` command the README names is a
console script of setup.cfg."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = re.compile(r"§ ?(\d+(?:\.\d+)*)")


def _design_sections() -> set[str]:
    heads = re.findall(r"^#+ §(\d+(?:\.\d+)*)\b", (ROOT / "docs" / "design.md").read_text(), flags=re.M)
    assert heads, "docs/design.md has no numbered sections"
    return set(heads)


def _texts():
    for base, pattern in (("src", "*.py"), ("src", "*.cpp"), ("experiments", "*.yaml"), ("scripts", "*"),
                          ("benchmarks", "*.py"), ("docs", "*.md")):
        for p in sorted((ROOT / base).rglob(pattern)):
            if p.is_file() and "history" not in p.parts:
                yield p
    yield ROOT / "README.md"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (≤ 250: details go to docs/guide.md)"
    text = "\n".join(lines)
    assert "make demo" in text and "make test" in text
    assert not re.search(r"\bissue \d+|\bround \d+", text, flags=re.I), "development history belongs in docs/"


def test_every_section_reference_resolves():
    sections = _design_sections()
    bad = []
    for p in _texts():
        try:
            text = p.read_text()
        except UnicodeDecodeError:
            continue
        for m in SECTION.finditer(text):
            if m.group(1) not in sections:
                bad.append(f"{p.relative_to(ROOT)}: §{m.group(1)}")
    assert not bad, "references to sections docs/design.md does not have: " + ", ".join(sorted(set(bad)))


def test_relative_links_resolve():
    bad = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                bad.append(f"{doc.relative_to(ROOT)} → {target}")
    assert not bad, bad


def test_readme_commands_are_console_scripts():
    cp = configparser.ConfigParser()
    cp.read(ROOT / "setup.cfg")
    scripts = {ln.split("=")[0].strip() for ln in cp["options.entry_points"]["console_scripts"].splitlines()
               if ln.strip()}
    named = set(re.findall(r"\b(ua3dtalk-[a-z0-9-]+)", (ROOT / "README.md").read_text()))
    assert named and named <= scripts, sorted(named - scripts)
