"""Every relative link in README.md and docs/ leads to a file that exists, and every `#anchor` to a
heading of its page, by GitHub's heading slugs (run as a script, it lists the broken links)."""

import os
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:id|name)=\"([^\"]+)\"", re.I)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1)(?!\n\n)[\s\S])+?\1")  # within a paragraph
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)
_LINE_ANCHOR = re.compile(r"^L\d+(?:-L\d+)?$")


def doc_files(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """README.md and every Markdown file under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def _prose_lines(text: str):
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        opened = _FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: its rendered words lower-cased, punctuation dropped,
    spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    """Every anchor a page offers: its headings' slugs (a repeated one gets -1, -2, …) and HTML
    anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _prose_lines(page.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(line))
        heading = _HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: pathlib.Path):
    """(line number, target) of every link and reference definition outside code; a link's text
    may run over several lines."""
    text = page.read_text(encoding="utf-8")
    prose = [""] * len(text.splitlines())
    for number, line in _prose_lines(text):
        prose[number - 1] = line
        reference = _REFERENCE.match(line)
        if reference:
            yield number, reference.group(1)
    blanked = _CODE_SPAN.sub(lambda span: re.sub(r"[^\n]", " ", span.group()), "\n".join(prose))
    for found in _LINK.finditer(blanked):
        yield blanked.count("\n", 0, found.start(1)) + 1, found.group(1)


def broken_links(pages: list[pathlib.Path], root: pathlib.Path = ROOT) -> list[str]:
    """One line per relative link whose file or anchor does not exist."""
    problems = []
    cache: dict[pathlib.Path, set[str]] = {}
    for page in pages:
        for number, target in links(page):
            if not target or _EXTERNAL.match(target):
                continue
            path, _, anchor = target.partition("#")
            where = f"{page.relative_to(root)}:{number}: ({target})"
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                problems.append(f"{where} no such file {os.path.relpath(linked, root)}")
            elif anchor and linked.suffix == ".md":
                if linked not in cache:
                    cache[linked] = anchors(linked)
                if anchor not in cache[linked]:
                    problems.append(f"{where} no heading with anchor #{anchor}")
            elif anchor and not _LINE_ANCHOR.match(anchor):
                problems.append(f"{where} #{anchor} is not a line anchor of a non-Markdown file")
    return problems


def test_every_relative_link_and_anchor_in_readme_and_docs_resolves():
    assert broken_links(doc_files()) == []


def test_a_broken_file_or_anchor_is_reported_with_page_and_line(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "# Top\n\n## Cache format `kdcache/2` (and `kdcache/1`)\n\n## Notes\n\n## Notes\n\n"
        "[ok](#cache-format-kdcache2-and-kdcache1) [ok](#notes-1) [ok](docs/a.md#a-b)\n"
        "[gone](docs/missing.md) [bad](docs/a.md#nowhere) [web](https://example.com/x#y)\n"
        "`[code](nowhere.md)`\n\n```\n[fenced](nowhere.md)\n```\n\na [link over\ntwo lines](#top-1)\n"
    )
    (tmp_path / "docs" / "a.md").write_text("# A, b!\n\n[up](../README.md#top)\n[self](#notes)\n")
    problems = broken_links(doc_files(tmp_path), tmp_path)
    assert problems == [
        "README.md:10: (docs/missing.md) no such file docs/missing.md",
        "README.md:10: (docs/a.md#nowhere) no heading with anchor #nowhere",
        "README.md:18: (#top-1) no heading with anchor #top-1",
        "docs/a.md:4: (#notes) no heading with anchor #notes",
    ]


if __name__ == "__main__":
    found = broken_links(doc_files())
    print("\n".join(found) or "every link resolves")
    sys.exit(1 if found else 0)
