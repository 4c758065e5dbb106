"""Run under torchrun: every rank writes the example keys it reads from the val split."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate import Accelerator  # noqa: E402

from vod2chat.config import load_config  # noqa: E402
from vod2chat.trainer.config import Config  # noqa: E402
from vod2chat.trainer.data import make_loader  # noqa: E402
from vod2chat.trainer.tokenizer import ChatTokenizer  # noqa: E402

store, tok_path, out = sys.argv[1:4]
acc = Accelerator(cpu=True)
cfg = load_config(Config, Path(__file__).resolve().parents[1] / "launch/debug.toml", [f"data.store={store}", 'data.val_vods=["1003"]'])
tok = ChatTokenizer.load(tok_path)
loader = make_loader(cfg.data, tok, "train", 4, acc.process_index, acc.num_processes, seed=0)
keys = [k for b in loader for k in b["keys"]]
Path(out, f"rank{acc.process_index}.json").write_text(json.dumps({"world": acc.num_processes, "keys": keys}))
