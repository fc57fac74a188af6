"""The README's promises about itself: every shell example in it runs as written, and every link in it and in
docs/ leads somewhere that exists.

Examples are the lines of README.md's ```sh blocks. Each runs, in order, with bash in one temporary folder that
holds links to the repository's `models/` and `tools/` (so whatever the examples write lands there), with this
checkout's packages first on the import path. A line that cannot run on this project's machines says so, visibly:
it ends with `# not run by the tests: WHY`, or a comment line of that form stands right above it. Only those lines
are skipped. A line that exits non-zero fails the test, naming the line, its exit status and its stderr."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

NOT_RUN = re.compile(r"#\s*not run by the tests:\s*(\S.*)$")
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINKED_INTO_WORKSPACE = ("models", "tools")  # what the examples read from the repository
LINE_TIMEOUT_S = 300


def examples(text: str) -> list[tuple[str, str | None]]:
    """(command line, why it is not run, or None) for every command of every ```sh block, in order."""
    found = []
    for block in SH_BLOCK.findall(text):
        lines, pending, reason = [], "", None
        for raw in block.splitlines():  # join continued lines first
            pending += raw[:-1] + " " if raw.rstrip().endswith("\\") else raw
            if not raw.rstrip().endswith("\\"):
                lines.append(pending.strip())
                pending = ""
        for line in lines:
            mark = NOT_RUN.search(line)
            if not line:
                continue
            if line.startswith("#"):
                reason = mark[1] if mark else reason
                continue
            found.append((line, mark[1] if mark else reason))
            reason = None
    return found


def test_the_readme_has_examples_and_says_why_it_skips_any():
    found = examples((ROOT / "README.md").read_text())
    assert [line for line, reason in found if reason is None], "README.md has no ```sh example that the tests run"
    assert all(reason.strip() for _, reason in found if reason is not None)


def test_every_readme_example_runs_as_written(tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    for name in LINKED_INTO_WORKSPACE:
        (workspace / name).symlink_to(ROOT / name, target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               XDG_CACHE_HOME=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    env.pop("HIERA_DEBUG", None)
    (tmp_path / "home").mkdir()
    for line, reason in examples((ROOT / "README.md").read_text()):
        if reason is not None:
            continue
        try:
            result = subprocess.run(["bash", "-c", line], cwd=workspace, env=env, capture_output=True, text=True,
                                    timeout=LINE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"README.md example ran past {LINE_TIMEOUT_S} s: {line}")
        if result.returncode != 0:
            pytest.fail(f"README.md example exited {result.returncode}: {line}\n"
                        f"stderr: {result.stderr[-3000:] or '(empty)'}", pytrace=False)


def anchors(path: Path) -> set[str]:
    """The anchors GitHub makes for a Markdown file's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated one numbered."""
    seen, found = {}, set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*$", FENCED.sub("", path.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    """Every Markdown link target in a file's prose (not in code blocks or code spans)."""
    return LINK.findall(CODE_SPAN.sub("", FENCED.sub("", path.read_text())))


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=[page.relative_to(ROOT).as_posix() for page in PAGES])
def test_every_relative_link_points_to_a_file_that_exists(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # a URL: allowed in docs/, not on the front page
            if page.name == "README.md":
                broken.append(f"{target}: a URL to another site (the README links only inside the repository)")
            continue
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading #{anchor} in {destination.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_front_page_names_no_outside_site():
    text = (ROOT / "README.md").read_text()
    assert not re.findall(r"https?://\S+", text)
