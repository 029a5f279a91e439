"""README.md's DVC commands as a user types them, in a shell whose PATH does not hold the venv (a fresh terminal
after `make run`), on a tiny project; and the one list of offline settings, `pipeline.OFFLINE_ENV`, that the
Makefile, the GitHub workflow and the Dockerfile rely on."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

import pipeline
from tests.project import PROJECT_ROOT, git, make_project, write_params

SHELL_PATH = "/usr/bin:/bin"  # a terminal without the venv: `python`, if any, is the system's
ACTIVATE = re.compile(r"(source|\.) \.venv/bin/activate")
RUNS_STAGES = re.compile(r"(make (repro|exp)|(\S*/)?dvc (repro|exp run))(\s|$)")
CHEAP_STAGE, CHEAP_PARAM = "prepare", "synthetic.seed"  # seconds: generates the tiny synthetic set


def code_blocks(text: str) -> list[list[str]]:
    """README's indented code blocks (outside ``` fences), each a list of lines without their `# comment`."""
    blocks: list[list[str]] = []
    block: list[str] = []
    fenced = False
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("    ") and line.strip():
            block.append(re.sub(r"\s+#(\s.*)?$", "", line.strip()))
        elif line.strip() and block:  # prose ends a block; blank lines stay inside it
            blocks.append(block)
            block = []
    return [b for b in blocks + [block] if b]


def stage_commands(text: str) -> list[tuple[tuple[str, ...], str]]:
    """(the block's setup so far, command) for each README command that runs DVC stages."""
    found = []
    for block in code_blocks(text):
        setup: list[str] = []
        for line in block:
            for part in (p.strip() for p in line.split("&&")):
                if ACTIVATE.fullmatch(part):
                    setup.append(part)
                elif RUNS_STAGES.match(part):
                    found.append((tuple(setup), part))
    return found


def cheap(command: str, value: int) -> tuple[str, bool]:
    """The same program and subcommand on the cheapest stage; True when it sets the param itself (exp)."""
    words = shlex.split(command)
    if words[0] == "make":
        # -o: the project's .venv is this test's venv (a symlink): never (re)install it from the copy
        out = ["make", "-o", ".venv/.installed", words[1], f"STAGE={CHEAP_STAGE}"]
        if words[1] == "exp":
            out.append(f"SET={CHEAP_PARAM}={value}")
    elif words[1] == "repro":
        out = [words[0], "repro", CHEAP_STAGE]
    else:
        out = [words[0], "exp", "run", "-S", f"{CHEAP_PARAM}={value}", CHEAP_STAGE]
    return shlex.join(out), "exp" in words[:3]


def test_readme_parsing_finds_its_stage_commands():
    text = """Run:

    make repro                      # plain DVC
    .venv/bin/python -m pipeline.flows

    source .venv/bin/activate
    dvc exp run -S a=1 -S b=2       # an experiment

```yaml
    dvc repro   # inside a fence: not a command
```

    git checkout <commit> && make exp SET=x=1
"""
    assert stage_commands(text) == [((), "make repro"), (("source .venv/bin/activate",), "dvc exp run -S a=1 -S b=2"),
                                    ((), "make exp SET=x=1")]
    assert cheap(".venv/bin/dvc repro", 3) == (".venv/bin/dvc repro prepare", False)
    assert cheap("dvc exp run -S a=1 -S b=2", 3) == ("dvc exp run -S synthetic.seed=3 prepare", True)
    assert cheap('make exp SET="a=1 b=2"', 3) == ("make -o .venv/.installed exp STAGE=prepare SET=synthetic.seed=3",
                                                   True)


def test_readme_documents_repro_and_experiments():
    commands = [command for _, command in stage_commands((PROJECT_ROOT / "README.md").read_text())]
    assert any(re.search(r"\brepro\b", c) for c in commands), commands
    assert any(re.search(r"\bexp\b", c) for c in commands), commands


@pytest.fixture
def user_project(tmp_path):
    """A tiny copy of the project with the Makefile, committed, whose .venv is the venv running these tests."""
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix) or not (venv / "bin" / "activate").is_file():
        pytest.skip("the tests do not run in a venv")
    for tool in ("bash", "make", "git"):
        if shutil.which(tool, path=SHELL_PATH) is None:
            pytest.skip(f"no {tool} on {SHELL_PATH}")
    project = make_project(tmp_path / "project")
    shutil.copy2(PROJECT_ROOT / "Makefile", project / "Makefile")
    (project / ".venv").symlink_to(venv, target_is_directory=True)
    with (project / ".git" / "info" / "exclude").open("a") as exclude:
        exclude.write("/.venv\n")  # .gitignore's `.venv/` does not match a symlink
    git(project, "add", "Makefile")
    git(project, "commit", "-qm", "Makefile")
    return project


def test_readme_dvc_commands_run_the_stages_with_the_venv_python_from_a_plain_shell(user_project):
    # each distinct way (program, subcommand, setup) once, on the cheap stage: the interpreter is what is tested
    commands = list(dict.fromkeys((setup, *cheap(command, value=0)) for setup, command in
                                  stage_commands((PROJECT_ROOT / "README.md").read_text())))
    assert commands
    env = {"PATH": SHELL_PATH, "HOME": os.environ.get("HOME", str(user_project)), "LANG": "C.UTF-8",
           "GIT_AUTHOR_NAME": "user", "GIT_AUTHOR_EMAIL": "user@localhost",
           "GIT_COMMITTER_NAME": "user", "GIT_COMMITTER_EMAIL": "user@localhost"}
    for value, (setup, command, sets_param) in enumerate(commands, start=1):
        if sets_param:
            command = command.replace(f"{CHEAP_PARAM}=0", f"{CHEAP_PARAM}={value}")
        else:  # `repro` after the user edited params.yaml, so the stage has something to do
            write_params(user_project, synthetic={"seed": value})
        script = "\n".join(["set -e", *setup, command])
        result = subprocess.run(["bash", "-c", script], cwd=user_project, env=env, capture_output=True, text=True,
                                timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"README's `{command}` (after {list(setup)}) failed:\n{output[-3000:]}"
        assert f"Running stage '{CHEAP_STAGE}'" in output, output[-3000:]
        params = yaml.safe_load((user_project / "params.yaml").read_text())
        assert params["synthetic"]["seed"] == value, command


def _without_offline_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in pipeline.OFFLINE_ENV}


def test_pipeline_env_prints_the_offline_settings_and_keeps_what_is_set():
    run = lambda *args, **extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "pipeline.env", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
        env=_without_offline_env() | extra).stdout.splitlines()
    assert dict(line.split("=", 1) for line in run()) == pipeline.OFFLINE_ENV
    assert run("--export") == [f"export {k}={shlex.quote(v)}" for k, v in pipeline.OFFLINE_ENV.items()]
    slow = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
    assert f"{slow}=300" in run(**{slow: "300"})
    # a shell's word splitting keeps `env $(python -m pipeline.env) cmd` intact only for plain values
    assert all(re.fullmatch(r"[\w.:/-]+", v) for v in pipeline.OFFLINE_ENV.values())


def test_the_makefile_workflow_and_conftest_derive_the_offline_settings_instead_of_copying_them():
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    workflow_text = (PROJECT_ROOT / ".github/workflows/retrain.yml").read_text()
    for name, text in [("Makefile", makefile), ("retrain.yml", workflow_text),
                       ("conftest.py", (PROJECT_ROOT / "tests/conftest.py").read_text())]:
        copied = [key for key in pipeline.OFFLINE_ENV if key in text]
        assert not copied, f"{name} repeats {copied}: derive them from pipeline.OFFLINE_ENV"
    # every Makefile command that starts a tool which does not import `pipeline` runs under $(OFFLINE)
    recipes = [line for line in makefile.splitlines() if line.startswith("\t")]
    tools = [line for line in recipes if re.search(r"-m dvc|bin/(mlflow|prefect|dvc)\b", line)]
    assert tools and all("$(OFFLINE)" in line for line in tools), tools
    assert re.search(r"^OFFLINE = env \$\$\(\$\(PY\) -m pipeline\.env\)$", makefile, re.M)
    # the workflow exports them for every step after the install, before any dvc command
    steps = [step.get("run", "") for step in yaml.safe_load(workflow_text)["jobs"]["retrain"]["steps"]]
    exported = next(i for i, run in enumerate(steps) if 'python -m pipeline.env >> "$GITHUB_ENV"' in run)
    users = [i for i, run in enumerate(steps) if i != exported and ("dvc" in run or "pipeline." in run)]
    assert users and exported < min(users), steps


def test_the_dockerfile_copy_of_the_offline_settings_matches_pipeline():
    text = (PROJECT_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(word.split("=", 1) for word in shlex.split(line[4:]) if "=" in word)
    assert {k: env.get(k) for k in pipeline.OFFLINE_ENV} == pipeline.OFFLINE_ENV


def test_only_the_known_harmless_warnings_are_silenced():
    def shown(message: str, module: str, category: type[Warning] = UserWarning) -> bool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipeline.silence_harmless_warnings()
            warnings.warn_explicit(message, category, "x.py", 1, module=module)
        return bool(caught)

    duplicate = ("The specified dataset source can be interpreted in multiple ways: LocalArtifactDatasetSource, "
                 "LocalArtifactDatasetSource. MLflow will assume that this is a LocalArtifactDatasetSource source.")
    assert not shown(duplicate, "mlflow.data.dataset_source_registry")
    assert shown(duplicate, "some.other.module")
    assert shown(duplicate, "mlflow.data.dataset_source_registry", RuntimeWarning)
    assert shown("The specified dataset source can be interpreted in multiple ways: LocalArtifactDatasetSource, "
                 "HTTPDatasetSource. MLflow will assume ...", "mlflow.data.dataset_source_registry")
