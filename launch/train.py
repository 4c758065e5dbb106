"""The command line of trainer/main.py (python, torchrun, accelerate launch): flags, the launcher check, exit.

`vod2chat train` has the same flags (both are generated from trainer.config.Config).
"""

from __future__ import annotations

import os
import sys

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
    nothing about N. Refuse rather than silently train on one.

    Accelerate's simple launcher sets MASTER_ADDR only when more than one process or machine was
    asked for, while every launcher that does start several (torchrun, its multi-GPU mode, mpirun)
    also tells each process the world size: MASTER_ADDR without a world size is that one process."""
    env = os.environ
    if not any(k.startswith("ACCELERATE_") for k in env) or "MASTER_ADDR" not in env:
        return  # not under accelerate, or a single process asked for
    if any(k in env for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")):
        return  # torchrun or MPI started the processes
    raise ValueError("accelerate launch started 1 process, not the several asked for: several CPU processes need MPI "
                     "there. Run torchrun --nproc_per_node N trainer/main.py ... (gloo) instead")


def cli(argv: list[str] | None = None) -> int:
    """`python trainer/main.py`, `torchrun ... trainer/main.py`, `accelerate launch trainer/main.py`: a user
    error is one line per rank (the traceback only with --debug), exit status 2."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)

    def run() -> int:
        check_launcher()
        main(parse_args(argv)[0])
        return 0
    return run_command("trainer/main.py", run, debug=debug)
