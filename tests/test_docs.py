"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("pip install torch=="))
    assert command in readme


def test_readme_starts_with_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```bash\n")[1:3]
    commands = [b.split("```")[0].strip() for b in blocks]
    assert len(commands) == 2
    assert all(c.startswith("pip install torch==2.14.1 torchvision==0.29.1") for c in commands)
