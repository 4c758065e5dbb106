"""Run under torchrun: trainer/main.py with every rank's loss per step appended to $LOSS_LOG,
and rank 1 SIGKILLing itself right after step $KILL_AFTER_STEP on the first attempt (a real
SIGKILL of a real rank: nothing in the trainer knows about it)."""

import json
import os
import signal
import sys
from pathlib import Path

from vod2chat.launch.train import parse_args
from vod2chat.trainer import main as entry

attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
rank = int(os.environ["RANK"])
kill_after, log = int(os.environ["KILL_AFTER_STEP"]), Path(os.environ["LOSS_LOG"])
train_step = entry.train_step


def logged_step(model, optimizer, scheduler, *rest, **kw):
    out = train_step(model, optimizer, scheduler, *rest, **kw)
    done = getattr(scheduler, "scheduler", scheduler).last_epoch  # steps done (restored by a resume)
    with open(log, "a") as f:
        f.write(json.dumps({"attempt": attempt, "rank": rank, "step": done, "loss": out["loss"]}) + "\n")
    if rank == 1 and attempt == 0 and done == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    return out


entry.train_step = logged_step
entry.main(parse_args(sys.argv[1:])[0])
