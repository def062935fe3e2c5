"""The README and the docs as a newcomer reads them: every command they show parses, every link resolves."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from protocols.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"```(?:bash|sh)\n(.*?)```", re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")


def _commands(text: str) -> list[str]:
    """The shell commands of a page: lines of its bash blocks, and inline code that starts with biosim."""
    lines = []
    for block in _FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line:
                lines.append(line)
    lines += [code for code in _INLINE.findall(text.replace("\n", " ")) if code.startswith("biosim ")]
    return lines


def _biosim_argv(command: str) -> list[str] | None:
    words = shlex.split(command)
    return words[1:] if words and words[0] == "biosim" else None


README_COMMANDS = _commands(README.read_text())
BIOSIM_COMMANDS = [c for c in README_COMMANDS if _biosim_argv(c) is not None]


def test_the_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; results and their history belong in docs/results/"
    assert len(BIOSIM_COMMANDS) >= 6  # the tour: simulate, crosscheck, train, validate, protocol, bench


@pytest.mark.parametrize("command", BIOSIM_COMMANDS)
def test_every_biosim_command_of_the_readme_parses(command):
    """Parsed by the real parser, flags and values included (nothing runs)."""
    parser = build_parser()
    try:
        parser.parse_args(_biosim_argv(command))
    except SystemExit as exit_:  # argparse's way of refusing
        pytest.fail(f"README command does not parse (exit {exit_.code}): {command}")


def test_every_subcommand_of_the_readme_has_help():
    subcommands = {tuple(w for w in _biosim_argv(c)[:2] if not w.startswith("-")) for c in BIOSIM_COMMANDS}
    for words in sorted(subcommands):
        if len(words) == 2 and words[0] != "protocol":
            words = words[:1]
        result = subprocess.run(
            [sys.executable, "-m", "protocols.cli", *words, "--help"], capture_output=True, text=True, cwd=ROOT
        )
        assert result.returncode == 0, (words, result.stderr[-500:])
        assert "usage: biosim" in result.stdout


def test_every_script_the_readme_runs_exists():
    scripts = [w for c in README_COMMANDS for w in shlex.split(c) if w.startswith("scripts/")]
    assert "scripts/main.sh" in scripts and "scripts/test.sh" in scripts
    for script in scripts:
        assert (ROOT / script).is_file(), script


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_local_link_resolves(page):
    missing = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to files that do not exist: {missing}"


def _tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


def test_no_file_cites_documents_outside_the_repository():
    """No project file points a reader to a specification or a work-tracking number they cannot open."""
    pattern = re.compile("S" + "PEC|issue [0-9]+")  # written split, so that this file does not match itself
    offenders = []
    for path in _tracked_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # figures and other binaries
        offenders += [
            f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)
        ]
    assert not offenders, offenders


def test_the_main_job_table_is_the_one_the_protocol_wrote():
    """The README's table is the published report's table, byte for byte (scripts/publish_results.py puts it there)."""
    text = README.read_text()
    begin, end = "<!-- main-job table: begin -->", "<!-- main-job table: end -->"
    block = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert block.count("\n|") >= 5, "the README's main-job table is empty: run scripts/publish_results.py"
    report = (ROOT / "docs" / "results" / "dale_pruning.md").read_text()
    assert block in report
