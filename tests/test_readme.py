"""Every command the README, docs/ and bench/README.md show works as written.

Fenced blocks say what they hold. ```sh: run as written, in a fresh copy of the repository (what
a clone has), README.md's first and then docs/ in file order, so a docs block may continue the
README's first run. ```shell: commands shown but not run here (clusters, buckets, GPUs, long
runs), each checked without running it: `vod2chat CMD ...` and `trainer/main.py ...` (under
python, torchrun or accelerate launch) must parse into their config (flags, dotted overrides and
the --config file), `make X` must be a Makefile target, a path into the repository must exist,
and a program the checker does not know fails. ```text: diagrams and trees, which must not
start a line with a command (it would escape the checks).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench/README.md"]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>\w*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
# Programs shown but not ours: their lines are only checked for repository paths.
EXTERNAL = {"tensorboard", "ray", "aws", "streamlink", "ffmpeg", "pip", "source"}
COMMANDS = {"vod2chat", "make", "torchrun", "accelerate", "python", ".venv/bin/python", *EXTERNAL}
REPO_PATH = re.compile(r"^(launch|bench|trainer|tests|docs|ingest|inference|shards|\.ci)/[\w./-]+$|^cluster\.yaml$")


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(pages: list[Path] = PAGES) -> list[Block]:
    out = []
    for page in pages:
        text = page.read_text()
        for m in FENCE.finditer(text):
            indent = len(m["indent"])
            body = "\n".join(line[indent:] for line in m["body"].splitlines())
            out.append(Block(page, text.count("\n", 0, m.start()) + 1, m["lang"], body))
    return out


def commands(text: str) -> list[list[str]]:
    """The simple commands of a block: continuation lines joined, comments dropped, split at
    `|`, `&&`, `||` and `;`. Prose lines in a block (a directory tree) yield no known program."""
    out: list[list[str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split, lex.commenters = True, "#"
        current: list[str] = []
        for tok in lex:
            if tok in {"|", "||", "&&", ";", "&"}:
                out.append(current)
                current = []
            else:
                current.append(tok)
        out.append(current)
    return [c for c in out if c]


def check_vod2chat(argv: list[str]) -> None:
    from vod2chat.launch.args import normalise_argv, parse_args
    from vod2chat.launch.cli import build_parser, config_of

    argv = normalise_argv(argv)
    config_of(parse_args(build_parser(argv), argv))


def check_trainer(argv: list[str]) -> None:
    from vod2chat.launch.train import parse_args

    parse_args(argv)


def check_command(cmd: list[str]) -> str:
    """Checks one command line without running it; returns what it was taken for."""
    for tok in cmd:
        if REPO_PATH.match(tok) and not (REPO / tok).exists():
            raise AssertionError(f"{tok} does not exist in the repository")
    prog = cmd[0]
    if prog == "vod2chat":
        check_vod2chat(cmd[1:])
        return "vod2chat"
    script = next((i for i, t in enumerate(cmd) if t.endswith("trainer/main.py")), None)
    if script is not None and (prog in {"python", "torchrun"} or cmd[:2] == ["accelerate", "launch"]):
        check_trainer(cmd[script + 1:])
        return "trainer"
    if prog == "make":
        targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
        missing = [t for t in cmd[1:] if not t.startswith("-") and t not in targets]
        assert not missing, f"make: no target {missing} in the Makefile"
        return "make"
    if prog.endswith("python") and len(cmd) > 1 and cmd[1].startswith("bench/"):
        return "bench"  # the script's existence is checked above
    if prog.endswith("python") and cmd[1:3] == ["-m", "pytest"]:
        return "pytest"
    if prog in EXTERNAL:
        return "external"
    raise AssertionError(f"`{shlex.join(cmd)}`: unknown program {prog!r}; run it in a ```sh block or teach "
                         "tests/test_readme.py to check it")


def test_every_block_says_what_it_holds():
    """The checker sees the README's commands (a parser that found nothing would pass everything),
    and no command hides in a block the checks skip."""
    readme = [b for b in blocks() if b.page == REPO / "README.md"]
    assert any(b.lang == "sh" for b in readme), "README.md has no ```sh block (its first run)"
    assert {"make", "vod2chat", "torchrun", "accelerate"} <= {c[0] for b in readme if b.lang != "text"
                                                              for c in commands(b.text)}
    bad = [f"{b}: ```{b.lang}" for b in blocks() if b.lang not in {"sh", "shell", "text"}]
    bad += [f"{b}: `{line.strip()}` in a ```text block: mark the block ```shell" for b in blocks() if b.lang == "text"
            for line in b.text.splitlines() if line.split()[:1] and line.split()[0] in COMMANDS]
    assert not bad, "\n".join(bad)


def runnable_commands(text: str) -> list[list[str]]:
    """The commands of a ```sh block that can be checked before it runs: a loop's body with its
    variable at its first value; not `source`, nor a command reading what an earlier one wrote (runs/)."""
    out, loop = [], {}
    for cmd in commands(text):
        if cmd[0] == "for" and cmd[2] == "in":
            loop = {cmd[1]: cmd[3]}
            continue
        if cmd[0] in {"do", "then"}:
            cmd = cmd[1:]
        if cmd[0] in {"done", "fi", "source"} or any(t.startswith("runs/") and t.endswith(".toml") for t in cmd):
            continue
        out.append([re.sub(r"\$(\w+)", lambda m: loop.get(m[1], m[0]), t) for t in cmd])
    return out


def test_every_shown_command_parses(monkeypatch):
    monkeypatch.chdir(REPO)  # --config launch/... is relative to the repository root, as the pages say
    shown = [(b, c) for b in blocks() if b.lang == "shell" for c in commands(b.text)]
    shown += [(b, c) for b in blocks() if b.lang == "sh" for c in runnable_commands(b.text)]
    assert sum(c[0] == "vod2chat" for b, c in shown if b.lang == "sh") >= 6  # the README's first run, checked early
    bad = []
    for b, cmd in shown:
        try:
            check_command(cmd)
        except (AssertionError, ValueError, OSError, SystemExit) as e:
            bad.append(f"{b}: `{shlex.join(cmd)}`: {type(e).__name__}: {e}")
    assert not bad, "\n".join(bad)


def test_a_broken_command_is_caught(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        check_command(["vod2chat", "train", "--config", "launch/debug.toml", "--train.stepz", "3"])
    with pytest.raises(ValueError, match="stepz"):
        check_command(["vod2chat", "train", "--config", "launch/debug.toml", "train.stepz=3"])
    with pytest.raises(ValueError, match="stepz"):
        check_command(["torchrun", "--nproc_per_node", "2", "trainer/main.py", "train.stepz=3"])
    with pytest.raises(AssertionError, match="no target"):
        check_command(["make", "tset"])
    with pytest.raises(AssertionError, match="does not exist"):
        check_command(["vod2chat", "train", "--config", "launch/nope.toml"])
    with pytest.raises(AssertionError, match="unknown program"):
        check_command(["vod2chta", "train"])


def fresh_copy(dst: Path) -> Path:
    """The repository's files as a clone has them (tracked and new ones, nothing ignored), and the
    environment `make install` made as .venv."""
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                               capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell the repository's files from build outputs")
    for f in filter(None, files):
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    venv = REPO / ".venv" if (REPO / ".venv/bin/activate").is_file() else Path(sys.prefix)
    if not (venv / "bin/activate").is_file():
        pytest.skip(f"no virtual environment with bin/activate at {venv}: run `make install`")
    (dst / ".venv").symlink_to(venv)
    return dst


@pytest.mark.slow
def test_the_runnable_blocks_run_as_written(tmp_path: Path):
    runnable = [b for b in blocks() if b.lang == "sh"]
    assert runnable and runnable[0].page == REPO / "README.md"
    clone = fresh_copy(tmp_path / "clone")
    # The pages say `source .venv/bin/activate` puts vod2chat on the PATH: make sure nothing else does.
    venv_bins = {str(REPO / ".venv/bin"), str(Path(sys.prefix) / "bin"), str(Path(sys.executable).parent)}
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p not in venv_bins)
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1"}
    env.pop("VIRTUAL_ENV", None)
    for b in runnable:
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", b.text], cwd=clone, env=env, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, f"{b} failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    # What the README says the first run leaves behind.
    import json

    run = clone / "runs/first"
    assert sorted(p.name for p in (clone / "vods").glob("*.mkv")) == ["101.mkv", "102.mkv", "103.mkv", "104.mkv"]
    assert len(list((clone / "store/vods/synth").glob("*.json"))) == 4
    assert json.loads((run / "eval-test.json").read_text())
    chat = json.loads((run / "chat.json").read_text())
    assert chat and all({"t", "user", "text"} <= set(m) for m in chat)
    assert (run / "replay.html").stat().st_size > 0 and (run / "chat.ass").stat().st_size > 0
    steps = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert steps[-1] == "step_0000300", steps  # docs/resume.md's block continued the run
