"""The repository's promises: CI runs the README's test command, the project installs as one
library whose module list matches the files, the README's layout names every module, the docs it
cites exist, and the style check passes."""

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def top_level_modules() -> set[str]:
    return {path.stem for path in ROOT.glob("*.py")}


def py_modules() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"]


def test_ci_runs_the_readme_test_command():
    test_command = next(c for c in readme_commands() if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_set_up_is_two_commands():
    # Two one-line commands set everything up on a fresh machine (the main job and the tests);
    # the section's other commands (re-train, tracking) run in the environment they made.
    section = (ROOT / "README.md").read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", section, flags=re.DOTALL)
    set_up = [command for command in commands if "pip install -r requirements.txt" in command.replace("-q ", "")]
    assert len(set_up) == 2 and all("\n" not in command for command in commands)
    assert commands[0] == set_up[0]  # the main job opens the section


def test_readme_main_job_is_an_experiment_at_cpu_whose_report_renders_from_committed_runs():
    """The main job trains nothing on a fresh clone: its experiment is not one whose runs are pending."""
    from test_reports import PENDING

    main_job = readme_commands()[0]
    notebook = re.search(r'"experiments/(experiment (\d+) - [^"]+\.ipynb)"', main_job)
    assert "PRESET=cpu" in main_job and notebook is not None
    assert (ROOT / "experiments" / notebook.group(1)).exists()
    assert int(notebook.group(2)) not in PENDING, "the README's main job would train runs its notebook still asks for"


def test_requirements_pin_cpu_torch():
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text().splitlines()


@pytest.mark.skipif(shutil.which("ruff") is None and not (ROOT / ".venv/bin/ruff").exists(), reason="ruff missing")
def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(ROOT / ".venv/bin/ruff")
    result = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_requirements_install_the_project_itself():
    assert (ROOT / "requirements.txt").read_text().splitlines()[-1] == "-e ."


def test_pyproject_lists_every_top_level_module():
    # setuptools installs only the listed modules: a module missing here imports in the repository
    # but not from a notebook, script or test started elsewhere.
    assert sorted(py_modules()) == sorted(top_level_modules())


def test_no_sys_path_edits_in_scripts_benchmarks_notebooks_and_test_set_up():
    files = [
        ROOT / "tests" / "conftest.py",
        *ROOT.glob("scripts/*.py"),
        *ROOT.glob("benchmarks/*.py"),
        *ROOT.glob("experiments/*.ipynb"),
    ]
    editing = [str(path.relative_to(ROOT)) for path in files if "sys.path.insert" in path.read_text()]
    assert not editing, f"import the installed library instead of editing sys.path: {editing}"


def test_installed_library_is_this_checkout(tmp_path):
    """From a folder outside the repository, the installed project imports this checkout's files."""
    try:
        importlib.metadata.distribution("looped-transformers")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the project is not installed in this environment (pip install -r requirements.txt)")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    code = "import json, importlib; print(json.dumps({m: importlib.import_module(m).__file__ for m in %r}))"
    result = subprocess.run(
        [sys.executable, "-c", code % py_modules()], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for module, file in json.loads(result.stdout).items():
        assert Path(file).resolve() == ROOT / f"{module}.py", f"{module} imports from {file}, not from {ROOT}"


def test_readme_layout_names_every_module_and_folder():
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    expected = [f"{module}.py" for module in top_level_modules()] + [
        "pyproject.toml",
        "docs/",
        "scripts/",
        "benchmarks/",
    ]
    missing = [name for name in expected if name not in layout]
    assert not missing, f"the README's layout section does not name {missing}"


def test_cited_docs_exist():
    cited = set()
    for path in [ROOT / "README.md", *ROOT.glob("*.py"), *ROOT.glob("docs/*.md"), *ROOT.glob("scripts/*.py")]:
        cited |= set(re.findall(r"\bdocs/[\w./-]+\.md\b", path.read_text()))
    assert cited, "nothing cites docs/"
    missing = sorted(name for name in cited if not (ROOT / name).exists())
    assert not missing, f"cited but not in the repository: {missing}"


def test_utils_docstring_states_the_real_import_order():
    """utils.py lists the modules it gathers in an order where each imports only those before it (and the model and
    the plumbing), and no library module imports utils."""
    import re

    order = re.findall(r"^- `(\w+)`:", (ROOT / "utils.py").read_text().split('"""')[1], re.MULTILINE)
    # the model and the plumbing
    free = {"transformer", "model_config", "components", "equilibrium", "tracking", "ensemble"}
    library = {path.stem for path in ROOT.glob("*.py")}
    gathered = {m for pair in re.findall(r"^from (\w+) import|^import (\w+)", (ROOT / "utils.py").read_text(),
                                         re.MULTILINE) for m in pair} & library
    assert gathered == set(order), f"utils.py gathers {sorted(gathered)} but its docstring lists {order}"
    for position, module in enumerate(order):
        source = (ROOT / f"{module}.py").read_text()
        imported = {m for pair in re.findall(r"^from (\w+) import|^import (\w+)", source, re.MULTILINE) for m in pair}
        wrong = (imported & library) - set(order[:position]) - free
        assert not wrong, f"{module}.py imports {sorted(wrong)}, listed after it (or utils)"
    for path in ROOT.glob("*.py"):
        if path.stem != "utils":
            assert not re.search(r"^(from utils import|import utils)", path.read_text(), re.MULTILINE), path.name
