"""The front page and docs/ cannot rot silently: links, anchors and `make` targets exist, README stays short.

Pure Python, no network: a relative link must name a file of the checkout and, with ``#anchor``,
a heading of that file under GitHub's slug rule; every ``make <target>`` in a code span or block
must be a target of the Makefile.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 220

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", flags=re.M | re.S)
CODE_SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", flags=re.M)
MAKE = re.compile(r"(?<![\w$(/.-])make\s+([A-Za-z0-9_][A-Za-z0-9_.-]*)(?![=\w])")
MAKE_RULE = re.compile(r"^([A-Za-z0-9_.][A-Za-z0-9_. -]*?)\s*::?(?!=)", flags=re.M)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor, outside code blocks; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of ``page`` that names a missing file or heading, as 'page: target (why)'."""
    text = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
    problems = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        file = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(root)}: {target}"
        if not file.is_relative_to(root.resolve()):
            problems.append(f"{where} (outside the repository)")
        elif not file.exists():
            problems.append(f"{where} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            problems.append(f"{where} (no heading with anchor #{anchor} in {file.name})")
    return problems


def code_of(text: str) -> str:
    return "\n".join([m.group(0) for m in FENCE.finditer(text)] + CODE_SPAN.findall(FENCE.sub("", text)))


def make_targets_named(text: str) -> set[str]:
    """The targets of every ``make X`` in the page's code blocks and code spans."""
    return set(MAKE.findall(code_of(text)))


def makefile_targets() -> set[str]:
    targets = set()
    for names in MAKE_RULE.findall((ROOT / "Makefile").read_text()):
        targets.update(name for name in names.split() if not name.startswith("."))
    return targets


def test_every_relative_link_names_an_existing_file_and_heading():
    problems = [problem for page in pages() for problem in broken_links(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_make_target_named_in_the_docs_exists():
    known = makefile_targets()
    assert {"demo", "test", "lint", "bench-scorer"} <= known
    missing = sorted(
        f"{page.relative_to(ROOT)}: make {target}"
        for page in pages()
        for target in make_targets_named(page.read_text())
        if target not in known
    )
    assert not missing, "no such Makefile target:\n" + "\n".join(missing)


def test_readme_stays_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < README_MAX_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    assert "make demo" in lines[8] and "make test" in lines[9], "the two commands open the README"


def test_every_docs_page_is_linked_from_the_readme_and_says_what_it_gives():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# ") and not lines[1].strip() and lines[2].strip(), (
            f"docs/{page.name}: a title, then one sentence saying what the reader gets"
        )


def test_the_checker_catches_a_broken_file_anchor_and_make_target(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Deploy: ONNX (float or int8)\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#deploy-onnx-float-or-int8) [web](https://example.org/x.md) "
        "[missing](docs/b.md) [bad anchor](docs/a.md#deploy) [self](#nowhere)\n\n"
        "`make demo` and `make no-such-target ARGS=1`; prose may make sense.\n"
    )
    problems = broken_links(page, root=tmp_path)
    targets = [problem.split(": ", 1)[1].split(" ")[0] for problem in problems]
    assert targets == ["docs/b.md", "docs/a.md#deploy", "#nowhere"]
    assert make_targets_named(page.read_text()) == {"demo", "no-such-target"}


def test_slugs_follow_github():
    assert slug("Which score: the default") == "which-score-the-default"
    assert slug("Demo: scikit-learn's digits (`make demo`)") == "demo-scikit-learns-digits-make-demo"
    assert slug("Label noise (3 seeds; `--q-low 0.05`)") == "label-noise-3-seeds---q-low-005"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}
