"""The command line of trainer/main.py (python, torchrun, accelerate launch): flags, the launcher check, exit.

`vod2chat train` has the same flags (both are generated from trainer.config.Config).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vod2chat.launch.args import ArgParser, add_config_args, config_from_args, run_command
from vod2chat.launch.args import parse_args as parse_cli
from vod2chat.trainer.config import Config
from vod2chat.trainer.main import __doc__ as train_doc
from vod2chat.trainer.main import main


def parse_args(argv: list[str] | None = None) -> tuple[Config, bool]:
    """The flags `vod2chat train` has too (both are generated from Config): (config, --debug)."""
    import argparse

    p = ArgParser(prog="trainer/main.py", description=train_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    add_config_args(p, Config, config_help="TOML config (launch/debug.toml, launch/base.toml)")
    a = parse_cli(p, sys.argv[1:] if argv is None else argv)
    return config_from_args(a), a.debug


def check_launcher() -> None:
    """`accelerate launch --cpu --num_processes N` (or N in its --config_file, or any N on a machine
    without GPUs) starts ONE process: several CPU processes need MPI there, and the script is told
    nothing about N. Read the launcher's own command line and refuse rather than silently train on one."""
    import psutil
    import yaml

    if "WORLD_SIZE" in os.environ or not any(k.startswith("ACCELERATE_") for k in os.environ):
        return  # torchrun / a multi-process launcher, or not under accelerate at all
    try:
        parent = psutil.Process(os.getppid()).cmdline()
    except (psutil.Error, OSError):
        return
    if not any(Path(part).name == "accelerate" or part.endswith("accelerate_cli.py") for part in parent[:3]):
        return

    def flag(name: str) -> str | None:
        for i, part in enumerate(parent):
            if part in (f"--{name}", f"--{name.replace('_', '-')}"):
                return parent[i + 1] if i + 1 < len(parent) else None
            if part.startswith(f"--{name}="):
                return part.split("=", 1)[1]
        return None

    n = flag("num_processes")
    if n is None and flag("config_file"):
        try:
            n = str(yaml.safe_load(Path(flag("config_file")).read_text()).get("num_processes", 1))
        except (OSError, yaml.YAMLError, AttributeError):
            n = None
    if n and n.isdigit() and int(n) > 1 and flag("mpirun_hostfile") is None:
        raise ValueError(f"accelerate launch started 1 process, not {n}: several CPU processes need MPI there. "
                         f"Run torchrun --nproc_per_node {n} trainer/main.py ... (gloo) instead")


def cli(argv: list[str] | None = None) -> int:
    """`python trainer/main.py`, `torchrun ... trainer/main.py`, `accelerate launch trainer/main.py`: a user
    error is one line per rank (the traceback only with --debug), exit status 2."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)

    def run() -> int:
        check_launcher()
        main(parse_args(argv)[0])
        return 0
    return run_command("trainer/main.py", run, debug=debug)
