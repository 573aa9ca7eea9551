"""The README stays true: its commands are CI's, its options exist, its code runs."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tridim.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_commands() -> dict[str, argparse.ArgumentParser]:
    commands = {}
    for name, sub in _subparsers(build_parser()).items():
        children = _subparsers(sub)
        if children:
            commands.update({f"{name} {child}": p for child, p in children.items()})
        else:
            commands[name] = sub
    return commands


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("pip install torch=="))
    assert command in README


def test_readme_starts_with_two_setup_commands():
    commands = [b.strip() for b in _blocks("bash")[:2]]
    assert len(commands) == 2
    assert all(c.startswith("pip install torch==2.14.1 torchvision==0.29.1") for c in commands)
    assert commands[0].endswith("tridim optimize")


@pytest.mark.parametrize("command", sorted(_all_commands()))
def test_every_option_is_documented(command):
    head = command.split()[0]
    sections = [
        s for s in README.split("\n### ")[1:] if re.search(rf"tridim {head}\b", s.splitlines()[0])
    ]
    assert sections, f"README has no section for tridim {head}"
    section = sections[0].split("\n## ")[0]
    options = [
        s
        for a in _all_commands()[command]._actions
        for s in a.option_strings
        if s.startswith("--") and s != "--help"
    ]
    missing = [o for o in options if f"`{o}" not in section]
    assert not missing, f"tridim {command}: {missing} not in the README"


def test_readme_commands_have_working_help():
    used = set()
    for block in _blocks("bash"):
        for match in re.finditer(r"tridim ([a-z-]+)(?: ([a-z]+))?", block):
            used.add(match.group(1))
    assert {"optimize", "report", "solve", "export-onnx"} <= used
    for command in sorted(used):
        done = subprocess.run(
            [sys.executable, "-m", "tridim.cli", command, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0 and "usage: tridim" in done.stdout, command


def test_readme_python_snippets_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for i, snippet in enumerate(_blocks("python")):
        script = tmp_path / f"snippet_{i}.py"
        script.write_text(snippet)
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]


def _main_job_table() -> dict[str, str]:
    """The README's main-job table, quantity -> value."""
    section = README.split("**Main job**", 1)[1].split("\n\n**", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", section, flags=re.M)
    return {name: value for name, value in rows if name not in ("quantity", "---")}


def test_readme_main_job_table_is_what_the_main_job_prints(tmp_path, capsys):
    """`tridim optimize` with its defaults, run here, must give the README's figures
    (times apart): the next change that moves them updates the README too."""
    import json

    from tridim.cli import main

    table = _main_job_table()
    assert main(["optimize", "--quiet", "--json", "--workdir", str(tmp_path / "run")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    triple = tuple(float(x) for x in re.findall(r"[\d.]+", table["triple (d, w, r)"])[:3])
    assert triple == tuple(round(report["triple"][k], 3) for k in "dwr")
    assert float(table["measured MACs ratio"].split()[0]) == round(report["macs_ratio"], 3)
    base, pruned = (float(x) for x in table["test accuracy, base -> pruned"].split(" -> "))
    assert abs(base - report["base_accuracy"]) <= 0.003
    assert abs(pruned - report["accuracy"]) <= 0.003
