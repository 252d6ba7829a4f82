"""The README's console examples are what the commands print: each `$ archspec ...` line of the README's console
blocks is run from the repository root, and its output must be the lines the README shows under it.

(`build` writes into a temporary directory instead of generated/, and its `wrote` line is compared by file name.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def console_examples() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of every `$ archspec ...` in the README's ```console blocks."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    examples: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                command = line[2:].split("  #")[0].strip()
                examples.append((command, []))
            elif examples:
                examples[-1][1].append(line)
    return examples


EXAMPLES = console_examples()


def test_the_readme_has_console_examples():
    commands = [command for command, _ in EXAMPLES]
    assert any(c.startswith("archspec check") for c in commands)
    assert any(c.startswith("archspec build") for c in commands)


@pytest.mark.parametrize(("command", "expected"), EXAMPLES, ids=[command for command, _ in EXAMPLES])
def test_readme_console_example(command, expected, tmp_path):
    args = command.split()[1:]
    if args[0] == "build":
        args += ["-o", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "archspec", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    printed = [line.rstrip() for line in (done.stdout + done.stderr).splitlines()]
    if args[0] == "build":
        expected = [line for line in expected if not line.startswith("wrote ")]
        wrote = [line for line in printed if line.startswith("wrote ")]
        printed = [line for line in printed if not line.startswith("wrote ")]
        assert [Path(line.split()[1]).name for line in wrote] == [f"{Path(args[1]).stem.replace('-', '_')}.py"]
    assert printed == expected
    assert done.returncode == (1 if any(line.startswith("error:") for line in expected) else 0)
