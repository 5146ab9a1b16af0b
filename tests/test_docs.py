"""The README and docs/ stay true: every relative link and anchor resolves, and every command line they show parses.

Links (README.md, BENCHMARKS.md, docs/*.md): each relative link `[text](path#anchor)` outside code must name a file
of the repository, and an anchor must be one of the target page's headings, turned into an anchor as GitHub does
(or an explicit `<a id=...>`).
Commands: every line of a fenced block of README.md (and of a `bash`/`sh`/`console` block elsewhere) that runs
`python -m MODULE` must name a module that exists; a `study.*` module's arguments are parsed by its own argparse
parser (`build_parser()`), so a renamed or misspelt option fails here, and `--space NAME` must be a shipped space.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from study.core.space import available_spaces

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")
RUNS_PYTHON_MODULE = re.compile(r"\bpython[\w.]*\s+-m\s")
PYTHON = re.compile(r"^(?:.*/)?python(?:3(?:\.\d+)?)?$")
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}
COMMAND_BLOCKS_IN_DOCS = {"bash", "sh", "shell", "console"}


def split_page(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The page's lines outside fenced blocks (a fenced line becomes empty), and its fenced blocks (language, lines)."""
    prose, blocks = [], []
    fence, language, block = None, "", []
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence, language, block = match.group(1), match.group(2).lower(), []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence) and not line.strip()[len(fence) :].strip():
            blocks.append((language, block))
            fence = None
            prose.append("")
        elif fence is not None:
            block.append(line)
            prose.append("")
        else:
            prose.append(line)
    return prose, blocks


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its text lower-cased, punctuation dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _ = split_page(page.read_text(encoding="utf-8"))
    found, seen = set(), {}
    for line in prose:
        found.update(EXPLICIT_ANCHOR.findall(line))
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            anchor = github_anchor(heading.group(1))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """'PAGE:LINE: TARGET: why' for every relative link of the page that does not resolve."""
    prose, _ = split_page(page.read_text(encoding="utf-8"))
    problems = []
    for number, line in enumerate(prose, 1):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if SCHEME.match(target):
                continue
            path_part, _, anchor = target.partition("#")
            where = f"{page.relative_to(root)}:{number}: {target}"
            resolved = (page.parent / path_part).resolve() if path_part else page
            if not resolved.is_relative_to(root.resolve()):
                problems.append(f"{where}: outside the repository")
            elif not resolved.exists():
                problems.append(f"{where}: no such file")
            elif anchor and resolved.suffix != ".md":
                problems.append(f"{where}: anchors only into Markdown pages (line numbers go stale)")
            elif anchor and anchor not in anchors(resolved):
                problems.append(f"{where}: no heading with that anchor in {resolved.relative_to(root.resolve())}")
    return problems


def command_lines(page: Path, languages: set[str] | None = None) -> list[str]:
    """Every line of the page's fenced blocks (of those languages, if given), continuation lines joined."""
    _, blocks = split_page(page.read_text(encoding="utf-8"))
    lines = []
    for language, block in blocks:
        if languages is not None and language not in languages:
            continue
        pending = ""
        for line in block:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            lines.append((pending + line).strip())
            pending = ""
    return [line.removeprefix("$ ") for line in lines if line and not line.startswith("#")]


def python_modules(line: str) -> list[tuple[str, list[str]]]:
    """(module, arguments) of every `python -m MODULE ...` the shell line runs."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    commands, current = [], []
    for token in tokens + [";"]:
        if token in OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    found = []
    for command in commands:
        while command and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", command[0]):  # VAR=value before the program
            command = command[1:]
        if len(command) >= 3 and PYTHON.match(command[0]) and command[1] == "-m":
            found.append((command[2], command[3:]))
    return found


def command_problems(module: str, arguments: list[str]) -> list[str]:
    """Why `python -m MODULE ARGUMENTS` would not be accepted (empty: it would)."""
    if importlib.util.find_spec(module) is None:
        return [f"no module {module}"]
    if not module.startswith("study."):
        return []
    cli = importlib.import_module(module)
    if not hasattr(cli, "build_parser"):
        return [f"{module} has no build_parser() to check its command line with"]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            args = cli.build_parser().parse_args(arguments)
    except SystemExit as exit:
        if exit.code in (0, None):  # --help
            return []
        return [stderr.getvalue().strip().splitlines()[-1]]
    space = getattr(args, "space", None)
    if module == "study.run" and space and not space.endswith((".yaml", ".yml")) and space not in available_spaces():
        return [f"--space {space}: no such space in search_spaces/"]
    return []


def shown_commands() -> list[tuple[str, str, list[str]]]:
    """(line, module, arguments) of the commands README.md shows, and those of docs/' shell blocks."""
    shown = []
    for page in PAGES:
        languages = None if page.name == "README.md" else COMMAND_BLOCKS_IN_DOCS  # elsewhere: usage synopses
        for line in command_lines(page, languages):
            if RUNS_PYTHON_MODULE.search(line):  # output lines and other programs are not parsed
                shown += [(f"{page.relative_to(ROOT)}: {line}", *found) for found in python_modules(line)]
    return shown


def test_the_docs_exist():
    names = {page.name for page in PAGES}
    assert "README.md" in names and len(PAGES) > 1, "README.md and docs/*.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_every_command_the_readme_shows_is_accepted():
    shown = shown_commands()
    readme_modules = {module for line, module, _ in shown if line.startswith("README.md")}
    assert {"study.run", "study.layers", "study.report", "study.merge"} <= readme_modules, readme_modules
    problems = [
        f"{line}: {problem}" for line, module, arguments in shown for problem in command_problems(module, arguments)
    ]
    assert problems == []


# --- the checks themselves catch what they name ------------------------------------------


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# A page\n\n## Speed: the cache, `once`\n\n## Speed: the cache, `once`\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/page.md) [ok](docs/page.md#speed-the-cache-once) [ok](docs/page.md#speed-the-cache-once-1)\n"
        "[ok](#top) [web](https://example.org/missing) `[code](missing.md)`\n"
        '<a id="top"></a>\n'
        "```\n[in a block](missing.md)\n```\n"
        "[gone](docs/missing.md) [no anchor](docs/page.md#speed) [self](#nowhere) [out](../../etc/passwd)\n"
    )
    problems = broken_links(readme, tmp_path)
    assert [problem.split(": ")[1] for problem in problems] == [
        "docs/missing.md",
        "docs/page.md#speed",
        "#nowhere",
        "../../etc/passwd",
    ], problems


def test_github_anchors():
    assert github_anchor("Speed: the frozen prefix computed once") == "speed-the-frozen-prefix-computed-once"
    assert github_anchor('What "layer" and `unfreeze depth` mean') == "what-layer-and-unfreeze-depth-mean"
    assert github_anchor("Merging two trials (document 002)") == "merging-two-trials-document-002"
    assert github_anchor("[The report](results.md) — **fronts**") == "the-report--fronts"


def test_a_bad_option_or_module_is_caught():
    line = "python3 -m venv .venv && RAY_AUTH_MODE=token .venv/bin/python -m study.run --space smoke --max-epochs 2"
    assert python_modules(line) == [("venv", [".venv"]), ("study.run", ["--space", "smoke", "--max-epochs", "2"])]
    assert command_problems("study.run", ["--space", "smoke", "--max-epochs", "2"]) == []
    assert command_problems("study.run", ["--help"]) == []
    assert "unrecognized arguments: --epochs" in command_problems("study.run", ["--epochs", "2"])[0]
    assert "invalid int value" in command_problems("study.run", ["--max-epochs", "two"])[0]
    assert "no such space" in command_problems("study.run", ["--space", "no_such_space"])[0]
    assert "required" in command_problems("study.merge", ["only_one.pt"])[0]
    assert "invalid choice" in command_problems("study.data", ["download", "imagenet"])[0]
    assert command_problems("study.nonexistent", []) == ["no module study.nonexistent"]
