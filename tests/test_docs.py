"""The documentation builds, and the code it shows runs.

The site builds with warnings as errors, and its CLI reference is the parser's. Every fenced
code block of README.md and docs/*.md is then taken as a reader would take it
(issue #25: docs/structures.md's library example failed on its third line):

* ``python`` blocks run, each in a fresh ``python -c`` (as in a notebook cell or an interactive
  session: no module is re-imported by spawned workers) in a workspace folder holding
  ``examples/`` and the placeholder files the documentation names (:data:`PLACEHOLDER_FILES`).
  A block that uses ``inp`` or ``client`` without making them gets them made first
  (:data:`PLACEHOLDER_NAMES`): the documentation's names for the reader's own input and
  ``distributed.Client``. The client is connected to a real two-worker LocalCluster.
* ``bash`` blocks: every ``python -m mbdask ...`` command runs (with this interpreter as
  ``python``, ``python3`` and ``.venv/bin/python``) in the same workspace and must exit 0;
  every other command must be one of :data:`COMMANDS_NOT_RUN`, which says why it is not run
  (it installs from the network, starts a server, is this suite, or is run by another test).
* ``yaml`` blocks parse (an ``<!-- include PATH -->`` inside is the file, as the site shows
  it); Dask configuration for mbdask names only settings mbdask has, with valid numbers.

A block that cannot run as written (it needs a batch system or a site's network names) is
marked in the Markdown on the line before its fence, ``<!-- not run: REASON -->``: the
site and GitHub do not show the comment, the test is skipped with the reason. Blocks in files
other owners keep that fail today are listed in :data:`KNOWN_FAILING` with what is wrong:
they are expected to fail (strictly, so that a fix that makes one pass removes its entry).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import DATA, EXAMPLES, ROOT
from helpers import trajectory

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,})(?P<language>[\w-]*)\s*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>.+?)\s*-->\s*$")
#: How long one block or command may take (each runs small inputs: seconds).
TIMEOUT = 300


@dataclass(frozen=True)
class Block:
    """A fenced code block: its document (relative to the repository), the fence's line, language and code."""

    document: str
    line: int
    language: str
    code: str
    #: the reason given in a ``<!-- not run: ... -->`` line just before the fence
    not_run: str | None = None

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order (fences indented under a list item too)."""
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == opening["ticks"])
        indent = len(opening["indent"])
        code = "\n".join(line[indent:] for line in lines[index + 1 : end])
        before = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marked = NOT_RUN.match(before)
        blocks.append(
            Block(
                str(path.relative_to(ROOT)), index + 1, opening["language"], code, marked["reason"] if marked else None
            )
        )
        index = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOCUMENTS for block in code_blocks(path)]

#: Blocks in documents this change does not own that fail today: (document, the block's first
#: line) -> what is wrong. Expected to fail, strictly: once fixed, the entry must go.
KNOWN_FAILING: dict[tuple[str, str], str] = {}


def _known(document: str, code: str) -> str | None:
    first = code.strip().splitlines()[0] if code.strip() else ""
    return KNOWN_FAILING.get((document, first))


def _param(block: Block, item: object, code: str, name: str):
    """A test parameter for ``item`` (a block, or a command of one): skipped where the block is marked
    not to run, expected to fail where :data:`KNOWN_FAILING` lists it."""
    marks = []
    if block.not_run:
        marks.append(pytest.mark.skip(reason=f"{block.name} is marked 'not run: {block.not_run}'"))
    elif _known(block.document, code):
        marks.append(pytest.mark.xfail(reason=f"{block.name}: {_known(block.document, code)}", strict=True))
    return pytest.param(item, code, id=name, marks=marks)


# --- the workspace the blocks run in ---------------------------------------------------------

#: Files the documentation names as the reader's own, made in the workspace: name -> what it is.
PLACEHOLDER_FILES = {
    "cluster.json": "GFN2-xTB water hexamer through 4-body (screening's examples cut at 4-body)",
    "input.json": "examples/water6-gfn2.json",
    "cluster.xyz": "the water trimer (examples/water3-uud.xyz)",
    "big.xyz": "the water hexamer (tests/data/water6-prism.xyz)",
    "traj.xyz": "five frames of the water trimer, slightly displaced",
    "a.json, b.yaml, c.xyz": "the water trimer through 2-body, as JSON, YAML and XYZ",
    "inputs/, isomers/": "folders of two water trimers each",
}
#: Names the documentation uses for the reader's own objects, made before a block that uses them without making them.
PLACEHOLDER_NAMES = {
    "inp": 'inp = "a.json"  # the reader\'s input',
    "client": (
        'import distributed, os; client = distributed.Client(os.environ["MBDASK_DOCS_SCHEDULER"], set_as_default=False)'
    ),
}


def _water_trimer_input(max_nbody: int) -> dict:
    from mbdask.inputs.xyz import ModelOptions, molecule_from_xyz

    return ModelOptions(max_nbody=max_nbody).input_for(molecule_from_xyz(EXAMPLES / "water3-uud.xyz"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder as a reader's: ``examples/``, the placeholder files, and ``python``/``.venv/bin/python`` as this
    interpreter."""
    import json

    from mbdask.inputs.xyz import ModelOptions, molecule_from_xyz

    home = tmp_path_factory.mktemp("docs-workspace")
    shutil.copytree(EXAMPLES, home / "examples")
    for folder in ("bin", ".venv/bin"):
        (home / folder).mkdir(parents=True)
    for wrapper in ("bin/python", "bin/python3", ".venv/bin/python"):
        (home / wrapper).write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (home / wrapper).chmod(0o755)
    hexamer = ModelOptions(max_nbody=4).input_for(molecule_from_xyz(DATA / "water6-prism.xyz"))
    (home / "cluster.json").write_text(json.dumps(hexamer))
    shutil.copy(EXAMPLES / "water6-gfn2.json", home / "input.json")
    shutil.copy(EXAMPLES / "water3-uud.xyz", home / "cluster.xyz")
    shutil.copy(DATA / "water6-prism.xyz", home / "big.xyz")
    trajectory(home / "traj.xyz", frames=5)
    trimer = _water_trimer_input(max_nbody=2)
    (home / "a.json").write_text(json.dumps(trimer))
    (home / "b.yaml").write_text(yaml.safe_dump(trimer))
    shutil.copy(EXAMPLES / "water3-uud.xyz", home / "c.xyz")
    for folder in ("inputs", "isomers"):
        (home / folder).mkdir()
        shutil.copy(EXAMPLES / "water3-uud.xyz", home / folder / "uud.xyz")
        frames = trajectory(home / "two-frames.xyz", frames=2).read_text().splitlines()
        (home / folder / "moved.xyz").write_text(
            "\n".join(frames[len(frames) // 2 :]) + "\n"
        )  # the second frame: displaced
    return home


@pytest.fixture(scope="module")
def environment(workspace, process_client) -> dict[str, str]:
    """The blocks' environment: this interpreter first on PATH, the shared LocalCluster's address."""
    return {
        **os.environ,
        "PATH": f"{workspace / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "MBDASK_DOCS_SCHEDULER": process_client.scheduler.address,
    }


def _failure(what: str, proc: subprocess.CompletedProcess) -> str:
    return f"{what} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}"


# --- python ------------------------------------------------------------------------------------


def free_names(code: str) -> set[str]:
    """Names a block reads that it never binds (assignment, import, def, for, with, ...)."""
    tree = ast.parse(code)
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    read = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    return read - bound


PYTHON = [block for block in ALL_BLOCKS if block.language == "python"]


@pytest.mark.parametrize("block, code", [_param(b, b, b.code, b.name) for b in PYTHON])
def test_python_block_runs(block: Block, code: str, workspace: Path, environment: dict) -> None:
    prelude = [PLACEHOLDER_NAMES[name] for name in sorted(free_names(code) & set(PLACEHOLDER_NAMES))]
    proc = subprocess.run(
        [sys.executable, "-c", "\n".join([*prelude, code])],
        cwd=workspace,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, _failure(f"{block.name} (python)", proc)


# --- bash ----------------------------------------------------------------------------------------

#: Commands of the documentation's shell blocks that are not run here, and why (matched at the start).
COMMANDS_NOT_RUN = {
    r"python3? -m venv\b": "makes a virtual environment; the suite runs in one already",
    r"(\S*/)?pip install\b": "installs packages from the network",
    r"(\S*/)?python -m pytest\b": "this test suite",
    r"(\S*/)?jupyter lab\b": "starts a server for a browser; tests/test_notebooks.py executes both notebooks",
    r"(\S*/)?jupyter nbconvert --to notebook --execute\b": (
        "tests/test_notebooks.py executes the notebooks as nbconvert does (nbclient)"
    ),
    r"conda\b": "conda is not in the suite's environment (environment.yml is for conda users)",
    r"mkdocs\b": "test_docs_build_strict_with_generated_cli_reference builds the site",
    r"(\S*/)?ruff\b": "lint and format check: .ci/run runs them before the tests",
    r"(\S*/)?mypy\b": "type check: .ci/run runs it before the tests",
}
MBDASK_COMMAND = re.compile(r"^(\w+=\S+\s+)*(\S*/)?python3? -m mbdask\b")


@dataclass(frozen=True)
class Command:
    block: Block
    text: str

    @property
    def name(self) -> str:
        return f"{self.block.name}: {self.text[:70]}"


def shell_commands(block: Block) -> list[Command]:
    """The commands of a shell block: lines joined at a trailing backslash, comments dropped, split at ``&&``."""
    commands = []
    for line in block.code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        text = shlex.join(words)
        for part in re.split(r"\s+&&\s+|\s+'&&'\s+", text):
            commands.append(Command(block, part.strip()))
    return commands


SHELL = [block for block in ALL_BLOCKS if block.language in ("bash", "sh", "shell", "console")]
COMMANDS = [command for block in SHELL for command in shell_commands(block)]
MBDASK_COMMANDS = [command for command in COMMANDS if MBDASK_COMMAND.match(command.text)]


def test_every_shell_command_is_run_or_says_why_not() -> None:
    assert MBDASK_COMMANDS, "no python -m mbdask command found in the documentation"
    unexplained = [
        command.name
        for command in COMMANDS
        if not MBDASK_COMMAND.match(command.text)
        and not any(re.match(p, command.text) for p in COMMANDS_NOT_RUN)
        and not command.block.not_run
    ]
    assert unexplained == [], "commands neither run nor named in COMMANDS_NOT_RUN (say why they are not run there)"


@pytest.mark.parametrize("command, code", [_param(c.block, c, c.text, c.name) for c in MBDASK_COMMANDS])
def test_mbdask_command_runs(command, code: str, workspace: Path, environment: dict) -> None:
    proc = subprocess.run(
        ["bash", "-c", code], cwd=workspace, env=environment, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, _failure(command.name, proc)


# --- yaml ----------------------------------------------------------------------------------------

YAML = [block for block in ALL_BLOCKS if block.language in ("yaml", "yml")]


def _hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _packaged(config, key: str) -> bool:
    try:
        config.packaged_default(key)
    except (KeyError, TypeError):
        return False
    return True


def config_value(tree: dict, path: str):
    for part in path.split("."):
        tree = tree[part]
    return tree


def _paths(tree: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        found += _paths(value, path) if isinstance(value, dict) and value else [path]
    return found


@pytest.mark.parametrize("block, code", [_param(b, b, b.code, b.name) for b in YAML])
def test_yaml_block_parses_and_names_real_settings(block: Block, code: str) -> None:
    import dask.config

    from mbdask import config

    text = _hooks().INCLUDE.sub(lambda match: (ROOT / match.group(1)).read_text(), code)
    data = yaml.safe_load(text)
    assert isinstance(data, dict), f"{block.name}: not a YAML mapping"
    if "mbdask" in data:  # Dask configuration for mbdask: every key one of mbdask.yaml's, every number valid
        unknown = [path for path in _paths(data) if path.startswith("mbdask.") and not _packaged(config, path)]
        assert unknown == [], f"{block.name}: not settings of mbdask.yaml"
        settings = {path: config_value(data, path) for path in _paths(data)}
        with dask.config.set(settings):  # by dotted keys: a nested dict would replace the whole mbdask section
            config.check_numbers()


# --- the site ------------------------------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (pip install 'mbdask[docs]')"
)
@pytest.mark.skipif(
    importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="mkdocstrings[python] is not installed (pip install 'mbdask[docs]')",
)
def test_docs_build_strict_with_generated_cli_reference(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    for option in ("--cores-per-fragment", "--report", "--store", "--keep-going", "--fragment-charges"):
        assert option in cli
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("submit", "compute", "start", "Submission", "report", "figures", "FragmentStore"):
        assert name in api
    inputs = (tmp_path / "site" / "inputs" / "index.html").read_text()
    assert "bsse_type: [cp, nocp]" in inputs  # the YAML example, included from examples/
