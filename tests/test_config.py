"""One configuration system: shipped configs, generated flags, overrides, errors, the import graph."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vod2chat.config import ConfigError, load_config, save_config

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"


def cli(argv: list[str]) -> int:
    from vod2chat.launch.cli import main

    return main(argv)


def config_classes() -> dict[str, type]:
    from vod2chat.launch.cli import COMMANDS, _load

    return {c.name: _load(c.config) for c in COMMANDS}


# Which stage each shipped TOML configures: a new file must be added here (and so gets checked).
SHIPPED = {
    "base.toml": ("train", "tokenizer"), "debug.toml": ("train", "tokenizer"), "demo_train.toml": ("train",),
    "ingest.toml": ("ingest",), "ingest_debug.toml": ("ingest",),
    "eval.toml": ("eval",), "eval_debug.toml": ("eval",),
    "generate.toml": ("generate",), "generate_debug.toml": ("generate",),
    "download.toml": ("download",), "download_debug.toml": ("download",),
    "synth.toml": ("synth",), "synth_debug.toml": ("synth",),
    "store.toml": ("store",), "store_debug.toml": ("store",),
    "demo.toml": ("demo",), "demo_debug.toml": ("demo",),
    "render.toml": ("render",), "render_debug.toml": ("render",),
}


def leaves(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        if isinstance(v, dict) and k != "streamer_weights":
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_every_shipped_config_loads_and_sets_what_it_says():
    classes = config_classes()
    assert set(classes) >= {"ingest", "train", "eval", "generate", "download", "synth", "demo", "tokenizer", "store"}
    assert sorted(p.name for p in LAUNCH.glob("*.toml")) == sorted(SHIPPED)
    for name, stages in SHIPPED.items():
        raw = tomllib.loads((LAUNCH / name).read_text())
        for stage in stages:
            cfg = load_config(classes[stage], LAUNCH / name)
            for key, value in leaves(raw):  # every value in the file reached its field, typed
                got = get(cfg, key)
                assert got == value and type(got) is type(value) or isinstance(value, int) and got == float(value), \
                    (name, stage, key, got, value)
    # What each file is for, field by field.
    assert load_config(classes["train"], LAUNCH / "base.toml").model.d_model == 512
    assert load_config(classes["train"], LAUNCH / "debug.toml").data.val_vods == []  # names no fixture VOD
    assert load_config(classes["ingest"], LAUNCH / "ingest_debug.toml").encoders.video_weights == "random"
    assert load_config(classes["ingest"], LAUNCH / "ingest.toml").encoders.video_weights is None  # pretrained
    assert load_config(classes["eval"], LAUNCH / "eval.toml").candidates == 100
    assert load_config(classes["generate"], LAUNCH / "generate_debug.toml").sampling.temperature == 0.0
    assert load_config(classes["demo"], LAUNCH / "demo_debug.toml").quick is True
    assert load_config(classes["demo"], LAUNCH / "demo.toml").train_config == "demo_train.toml"
    assert (LAUNCH / load_config(classes["demo"], LAUNCH / "demo.toml").train_config).is_file()
    assert load_config(classes["store"], LAUNCH / "store_debug.toml").dry_run is True
    assert load_config(classes["synth"], LAUNCH / "synth_debug.toml").duration < load_config(
        classes["synth"], LAUNCH / "synth.toml").duration


def test_a_saved_config_loads_back_equal(tmp_path: Path):
    for stage, cls in config_classes().items():
        cfg = cls()
        save_config(cfg, tmp_path / f"{stage}.toml")
        assert load_config(cls, tmp_path / f"{stage}.toml") == cfg, stage


def test_sampling_fields_live_in_one_place():
    from vod2chat.inference.evaluate import EvalConfig
    from vod2chat.inference.generate import GenerateConfig
    from vod2chat.trainer.sampling import SamplingConfig

    names = {f.name for f in dataclasses.fields(SamplingConfig)}
    for cls in (EvalConfig, GenerateConfig):
        own = {f.name for f in dataclasses.fields(cls)}
        assert not own & names, cls  # no copy of a sampling field with its own default
        assert cls().sampling == SamplingConfig()


def test_overrides_bare_numeric_ids_and_did_you_mean():
    from vod2chat.trainer.config import Config

    d = load_config(Config, LAUNCH / "debug.toml", ["data.val_vods=410474822", "data.test_vods=[410474822, 7]",
                                                    "data.streamers=a,b", "data.streamer_weights={a = 2}",
                                                    "tokenizer.path=0123", "train.steps=7"]).data
    assert d.val_vods == ["410474822"] and d.test_vods == ["410474822", "7"] and d.streamers == ["a", "b"]
    assert d.streamer_weights == {"a": 2.0}
    assert load_config(Config, None, ["tokenizer.path=0123"]).tokenizer.path == "0123"  # a string stays as typed
    with pytest.raises(ConfigError, match=r"train\.stepz: unknown key; did you mean train\.steps\?"):
        load_config(Config, LAUNCH / "debug.toml", ["train.stepz=3"])
    with pytest.raises(ConfigError, match=r"did you mean train\.steps\?"):
        load_config(Config, None, ["steps=3"])
    with pytest.raises(ConfigError, match="expected int"):
        load_config(Config, None, ["train.steps=many"])
    with pytest.raises(ConfigError, match="nope.toml: no such config file"):
        load_config(Config, "nope.toml")


def test_flags_are_generated_from_the_config_and_agree_with_overrides():
    from vod2chat.launch.args import parse_args
    from vod2chat.launch.cli import build_parser, config_of

    def parse(argv):
        return config_of(parse_args(build_parser(argv), argv))

    by_flags = parse(["train", "--config", str(LAUNCH / "debug.toml"), "--train.steps", "7", "--store", "s",
                      "--data.val_vods", "410474822", "--no-train.progress", "--resume", "--model.d-model", "32"])
    by_keys = parse(["train", "--config", str(LAUNCH / "debug.toml"), "train.steps=7", "data.store=s",
                     "data.val_vods=410474822", "train.progress=false", "train.resume=true", "model.d_model=32"])
    assert by_flags == by_keys and by_flags.train.steps == 7 and by_flags.train.resume and by_flags.model.d_model == 32
    g = parse(["generate", "--run", "r", "--vod", "v.mkv", "--weights", "random", "--top-k", "5", "--end", "1:00:00"])
    assert (g.encoders.video_weights, g.encoders.audio_weights, g.sampling.top_k, g.end) == ("random", "random", 5,
                                                                                             "1:00:00")
    i = parse(["ingest", "--store", "s", "--streamer", "x", "a.mkv", "b.irc", "--set", "segment_s=20"])
    assert (i.inputs, i.segment_s, i.streamer) == (["a.mkv", "b.irc"], 20.0, "x")
    # Bare overrides and inputs anywhere among the flags.
    mixed = parse(["train", "--train.run_dir", "r", "train.steps=5", "--store", "s", "data.val_vods=7"])
    assert (mixed.train.run_dir, mixed.train.steps, mixed.data.store, mixed.data.val_vods) == ("r", 5, "s", ["7"])
    i = parse(["ingest", "a.mkv", "--streamer", "x", "b.irc", "fps=2"])
    assert (i.inputs, i.fps, i.streamer) == (["a.mkv", "b.irc"], 2.0, "x")
    s = parse(["store", "verify", "./st"])
    assert (s.action, s.store) == ("verify", "./st")
    d = parse(["download", "123456", "https://www.twitch.tv/videos/654321", "--quality", "720p"])
    assert d.vods == ["123456", "https://www.twitch.tv/videos/654321"] and d.quality == "720p"


def test_every_subcommand_has_help(capsys):
    from vod2chat.launch.cli import COMMANDS

    for c in COMMANDS:
        with pytest.raises(SystemExit) as e:
            cli([c.name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: vod2chat {c.name}" in out and "--config" in out and "--debug" in out, c.name
        assert c.description.split()[0] in out  # its own description, not a bare usage line
    r = subprocess.run([sys.executable, "-m", "vod2chat.launch.cli", "--version"], capture_output=True, text=True)
    from vod2chat import __version__
    assert r.returncode == 0 and r.stdout.strip() == f"vod2chat {__version__}"
    r = subprocess.run([sys.executable, str(REPO / "trainer/main.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--train.steps" in r.stdout and "--resume" in r.stdout


def test_no_file_of_trainer_shadows_a_module_when_it_runs_as_a_script(tmp_path: Path):
    """`python trainer/main.py` (torchrun, accelerate launch) puts trainer/ first on sys.path: a file there
    named like a standard or installed top-level module would replace it for every library. None is."""
    stems = sorted(p.stem for p in (REPO / "trainer").glob("*.py") if p.stem != "__init__")
    code = ("import importlib.util, json, sys; "
            f"print(json.dumps([s for s in {stems!r} if s in sys.stdlib_module_names or importlib.util.find_spec(s)]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert r.stdout.strip() == "[]", f"trainer/ files named like top-level modules: {r.stdout}"


def test_a_user_error_is_one_line_and_debug_shows_the_traceback(capsys):
    assert cli(["train", "--config", str(LAUNCH / "debug.toml"), "train.stepz=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vod2chat train: error: train.stepz: unknown key; did you mean train.steps?  "
                   "(--debug shows the traceback)"]
    with pytest.raises(ConfigError):
        cli(["train", "--debug", "train.stepz=5"])
    assert cli(["eval"]) == 2 and "--run is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli(["train", "--train.stepz", "5"])
    assert e.value.code == 2 and "did you mean --train.steps?" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_trainer_entry_point_prints_one_line_per_rank(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(REPO / "trainer/main.py"), "--config", str(LAUNCH / "debug.toml"),
                        "train.stepz=5"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["trainer/main.py: error: train.stepz: unknown key; did you mean "
                                             "train.steps?  (--debug shows the traceback)"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                        str(REPO / "trainer/main.py"), "--config", str(LAUNCH / "debug.toml"), "train.stepz=5"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    ours = [line for line in r.stderr.splitlines() if "unknown key" in line]
    assert r.returncode != 0 and 1 <= len(ours) <= 2, r.stderr  # one line per rank (torchrun may stop one first)
    # torchrun's launcher adds its own ChildFailedError summary; no frame of vod2chat's code is shown.
    frames = [line for line in r.stderr.splitlines() if line.strip().startswith("File ")]
    assert not [f for f in frames if "site-packages" not in f and "frozen" not in f], r.stderr


# -- the import graph ------------------------------------------------------------------------
PACKAGES = ("ingest", "shards", "synth", "trainer", "inference", "launch")
LAYER = {"config": 0, "shards": 1, "ingest": 2, "synth": 2, "trainer": 2, "inference": 3, "launch": 4}


def package_modules() -> dict[str, Path]:
    mods = {"vod2chat": REPO / "__init__.py", "vod2chat.config": REPO / "config.py"}
    for pkg in PACKAGES:
        for p in (REPO / pkg).glob("*.py"):
            name = f"vod2chat.{pkg}" if p.stem == "__init__" else f"vod2chat.{pkg}.{p.stem}"
            mods[name] = p
    return mods


def _is_main_block(node: ast.stmt) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__" and isinstance(node.test.comparators[0], ast.Constant)
            and node.test.comparators[0].value == "__main__")


def import_graph() -> dict[str, set[str]]:
    """Every import of a vod2chat module anywhere in a module (top level or inside a function), except in
    its `if __name__ == "__main__":` block: that runs only when the file is the program (trainer/main.py
    under torchrun), never on import, so it is a launcher and may call launch/."""
    mods = package_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        tree.body = [n for n in tree.body if not _is_main_block(n)]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in mods and t != name and t != "vod2chat":
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as [a, b, ..., a], or None (depth-first search, grey/black marks)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_the_cycle_finder_finds_cycles_and_the_graph_sees_lazy_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()
    # generate imports ingest.features inside a function: the walk sees it.
    assert "vod2chat.ingest.features" in graph["vod2chat.inference.generate"]
    assert "vod2chat.trainer.main" in graph["vod2chat.launch.cli"]
    # trainer/main.py's script block calls launch/train.py: not an import of the module trainer.main.
    assert "vod2chat.trainer.main" in graph["vod2chat.launch.train"]
    assert "vod2chat.launch.train" not in graph["vod2chat.trainer.main"]


def test_inference_does_not_load_accelerate():
    """eval, generate and live share the batch helpers and checkpoints with training, not its launcher."""
    code = ("import sys; import vod2chat.inference.evaluate, vod2chat.inference.generate, vod2chat.inference.live; "
            "print(sorted(m for m in ('accelerate', 'vod2chat.trainer.steps', 'vod2chat.trainer.main') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout


def test_no_module_imports_in_a_cycle_and_dependencies_point_one_way():
    graph = import_graph()
    assert len(graph) > 30
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
    layer = {m: LAYER[m.split(".")[1]] for m in graph if m != "vod2chat"}
    for m, deps in graph.items():
        for d in deps:
            if m in layer and d in layer:
                assert layer[d] <= layer[m], \
                    f"{m} imports {d}: dependencies point launch -> inference -> trainer/ingest -> shards"


@pytest.mark.slow
def test_accelerate_launch_of_several_cpu_processes_is_refused_with_the_command_that_works(tmp_path: Path):
    """`accelerate launch --cpu --num_processes 2` starts one process: it says so and names torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    base = [str(REPO / "trainer/main.py"), "--config", str(LAUNCH / "debug.toml"), "--store", str(tmp_path / "nope")]
    r = subprocess.run([accelerate, "launch", "--cpu", "--num_processes", "2", *base], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300)
    assert r.returncode != 0 and "started 1 process, not the several" in r.stderr and "torchrun --nproc_per_node N" in r.stderr
    # One process as configured: no such complaint, the run's own error (the missing store) instead.
    r = subprocess.run([accelerate, "launch", "--config_file", str(LAUNCH / "accelerate/cpu.yaml"), *base],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode != 0 and "no such store" in r.stderr and "torchrun" not in r.stderr


def numeric_leaves(cls: type, prefix: str = ""):
    """(dotted key, field) of every int/float field (also optional ones, lists and tables of them)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        h = hints[f.name]
        if dataclasses.is_dataclass(h):
            yield from numeric_leaves(h, f"{prefix}{f.name}.")
            continue
        args = [a for a in (typing.get_args(h) or (h,)) if a is not type(None)]
        if any(a in (int, float) for a in args) and h is not bool:
            yield f"{prefix}{f.name}", f


def test_every_numeric_field_of_every_stage_declares_a_range_its_default_lies_in():
    import dataclasses

    from vod2chat.config import check_range

    for stage, cls in config_classes().items():
        for key, f in numeric_leaves(cls):
            assert f.metadata.get("range"), f"{stage}: {key} declares no range (param(..., ge=/gt=/le=/lt=))"
            if f.default is not dataclasses.MISSING and f.default is not None:
                check_range(f.default, f.metadata["range"], f"{stage}:{key}")


@pytest.mark.parametrize("override, key, value, why", [
    ("data.window_s=-5", "data.window_s", "-5.0", "must be a finite number > 0"),
    ("data.window_s=nan", "data.window_s", "nan", "must be a finite number > 0"),
    ("train.lr=inf", "train.lr", "inf", "must be a finite number > 0"),
    ("data.context_messages=-1", "data.context_messages", "-1", "must be a finite number >= 0"),
    ("train.global_batch=0", "train.global_batch", "0", "must be a finite number >= 1"),
    ("train.steps=-1", "train.steps", "-1", "must be a finite number >= 1"),
    ("train.micro_batch=0", "train.micro_batch", "0", "must be a finite number >= 1"),
    ("train.eval_every=0", "train.eval_every", "0", "must be a finite number >= 1"),
    ("train.save_every=0", "train.save_every", "0", "must be a finite number >= 1"),
    ("train.beta2=1", "train.beta2", "1.0", "must be a finite number >= 0 and < 1"),
    ("data.streamer_weights={a = -1.0}", "data.streamer_weights.a", "-1.0", "must be a finite number >= 0"),
])
def test_nonsense_numbers_are_refused_at_load_naming_key_value_and_range(override, key, value, why, capsys, tmp_path):
    """The issue's cases, through the real `vod2chat train` command line: exit 2 before any set-up,
    one line naming the key, the value and the range."""
    run = tmp_path / "run"
    assert cli(["train", "--config", str(LAUNCH / "debug.toml"), "--store", str(tmp_path / "nostore"),
                "--train.run-dir", str(run), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vod2chat train: error: {key}={value}: out of range, {why}  (--debug shows the traceback)"]
    assert not run.exists()


def test_a_range_is_checked_for_flags_and_toml_too(tmp_path: Path, capsys):
    from vod2chat.trainer.config import Config

    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = -0.1\n")
    with pytest.raises(ConfigError, match=r"^train\.lr=-0\.1: out of range, must be a finite number > 0$"):
        load_config(Config, bad)
    assert cli(["train", "--config", str(LAUNCH / "debug.toml"), "--train.lr", "nan"]) == 2
    assert "train.lr=nan: out of range" in capsys.readouterr().err
    assert cli(["eval", "--run", str(tmp_path), "--top-p", "1.5"]) == 2
    assert "sampling.top_p=1.5: out of range, must be a finite number > 0 and <= 1" in capsys.readouterr().err
    assert load_config(Config, None, ["train.lr=1e-3", "data.window_s=5"]).data.window_s == 5.0
