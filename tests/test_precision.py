"""Precision across CPU kinds: VOD2CHAT_PRECISION makes this machine count as either kind; a store
keeps the precision its first ingest chose, extended from the other kind of CPU (real local Ray,
real synthetic VODs, the kind simulated with the override); store.json is untrusted like any
record; a fingerprint mismatch is one line naming the field."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from store_factory import FP, make_store
from helpers import ingest_config
from vod2chat.ingest.config import IngestConfig
from vod2chat.ingest.precision import (ENV, PrecisionMismatch, cpu_has_native_bf16, machine_line, resolve_precision,
                                       runs_natively, warn_if_emulated)
from vod2chat.shards.store import Store, StoreError

CPU = torch.device("cpu")


def test_the_override_makes_auto_resolve_to_it_and_says_so(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(ENV, raising=False)
    hw = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", CPU) == hw and runs_natively("bf16", CPU) == (hw == "bf16")
    for kind in ("fp32", "bf16"):
        monkeypatch.setenv(ENV, kind)
        assert resolve_precision("auto", CPU) == kind
        assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
        assert runs_natively("bf16", CPU) == (kind == "bf16") and runs_natively("fp32", CPU)
        line = machine_line("bf16 autocast")
        assert f"{ENV}={kind}" in line and "precision: bf16 autocast" in line
        assert f"bf16 native: {'yes' if cpu_has_native_bf16() else 'no'}" in line  # the hardware, not the override
    monkeypatch.setenv(ENV, "fp32")
    assert warn_if_emulated("bf16", CPU, " (test)") and warn_if_emulated("fp32", CPU) is None
    monkeypatch.setenv(ENV, "fp64")
    with pytest.raises(ValueError, match=f"environment variable {ENV}='fp64': set it to fp32 or bf16"):
        resolve_precision("auto", CPU)


def test_a_fingerprint_mismatch_is_one_line_naming_the_field_both_values_and_the_fix(tmp_path: Path):
    store = make_store(tmp_path / "s", vods=1, segments=1)
    other = {"video": {**FP["video"], "precision": "bf16 autocast"}, "audio": FP["audio"]}
    store.check_fingerprints(FP)
    store_fp = {"video": {**FP["video"], "precision": "fp32"}, "audio": FP["audio"]}
    with pytest.raises(StoreError) as e:  # the store has no precision field: None there
        store.check_fingerprints(other)
    msg = str(e.value)
    assert "\n" not in msg and "video precision None in the store, 'bf16 autocast' in this ingest" in msg and "--precision" in msg
    assert "fps" not in msg and "model" not in msg and "audio" not in msg  # only the field that differs
    (tmp_path / "s2").mkdir()
    store2 = make_store(tmp_path / "s2", vods=1, segments=1)
    for rec in store2.records():
        store2.commit_record(type(rec)(**{**rec.__dict__, "fingerprints": store_fp}))
    with pytest.raises(StoreError) as e:
        store2.check_fingerprints({"video": {**other["video"], "fps": 2.0}, "audio": FP["audio"]})
    msg = str(e.value)
    assert "\n" not in msg and "video fps 1.0 in the store, 2.0 in this ingest" in msg and "video precision 'fp32' in the store, 'bf16 autocast' in this ingest" in msg
    assert "pass --precision fp32" in msg and "pass --fps 1.0" in msg


@pytest.mark.parametrize("content, why", [
    (b"\x80not json", "not valid JSON"),
    (b'["bf16"]', "must be a JSON object"),
    (b'{"precision": "../../etc"}', "is not one of fp32, bf16, fp16"),
    (b'{"precision": 16}', "field 'precision' must be a string"),
    (b'{"created": "x"}', "field 'precision' must be a string"),
])
def test_a_hostile_store_json_is_an_error_naming_the_file(tmp_path: Path, content: bytes, why: str):
    store = make_store(tmp_path / "s", vods=1, segments=1)
    (tmp_path / "s" / "store.json").write_bytes(content)
    with pytest.raises(StoreError, match=why) as e:
        store.precision()
    assert str(tmp_path / "s" / "store.json") in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(StoreError):  # an ingest stops before writing anything
        store.pin_precision("fp32")
    assert (tmp_path / "s" / "store.json").read_bytes() == content  # nothing overwritten


def test_an_old_store_without_store_json_keeps_its_records_precision(tmp_path: Path):
    store = make_store(tmp_path / "s", vods=1, segments=1)
    assert store.precision() == "fp32"  # fingerprints without a precision field: fp32, as before it existed
    assert not (tmp_path / "s" / "store.json").exists()  # reading writes nothing
    assert store.pin_precision("bf16") == "fp32"  # an ingest writes down what the records say
    assert json.loads((tmp_path / "s" / "store.json").read_text())["precision"] == "fp32"
    new = Store(str(tmp_path / "new"))
    assert new.precision() is None
    assert new.pin_precision("bf16", cpu="some CPU") == "bf16" and new.pin_precision("fp32") == "bf16"
    info = json.loads((tmp_path / "new" / "store.json").read_text())
    assert info["precision"] == "bf16" and info["cpu"] == "some CPU"


# -- Ray: a store begun on one CPU kind, extended from the other ----------------------------
@pytest.fixture(scope="module")
def vods(tmp_path_factory) -> Path:
    from vod2chat.synth.scenes import synthesize

    d = tmp_path_factory.mktemp("prec_vods")
    for i in range(2):
        synthesize(d / f"v{i}", seed=i, duration=8.0, vod_id=f"70{i}")
    return d


def cfg_for(store: Path, inputs: Path, **kw) -> IngestConfig:
    base = dict(store=str(store), streamer="p", inputs=[str(inputs)], segment_s=4.0, lookback_s=2.0, fps=1.0,
                segments_per_shard=2, video_weights="random", audio_weights="random", device="cpu", video_batch=8,
                num_actors=1, progress=False, precision="auto")
    return ingest_config(**{**base, **kw})


def test_a_store_keeps_the_precision_of_its_first_ingest_on_the_other_cpu_kind(
        vods: Path, tmp_path: Path, local_ray, monkeypatch: pytest.MonkeyPatch, caplog):
    from vod2chat.ingest.driver import main

    store_dir = tmp_path / "store"
    monkeypatch.setenv(ENV, "bf16")  # a CPU with native bf16 begins the store
    first = main(cfg_for(store_dir, vods / "v0"))
    assert first.done == ["p/700"] and not first.failed and first.precision == "bf16"
    assert json.loads((store_dir / "store.json").read_text())["precision"] == "bf16"
    assert not [w for w in first.warnings if "native" in w] and "precision: bf16 (the store's)" in first.table()

    monkeypatch.setenv(ENV, "fp32")  # an AVX2-only CPU extends it: its `auto` would be fp32
    caplog.set_level(logging.WARNING, logger="vod2chat.ingest.driver")
    second = main(cfg_for(store_dir, vods / "v1"))
    assert second.done == ["p/701"] and not second.failed, second.table()
    assert second.precision == "bf16"
    slow = [w for w in second.warnings if "has no native bf16" in w]
    assert len(slow) == 1 and "CPU kind fp32" in slow[0] and "anyway" in slow[0]  # once, for its one node
    assert sum("has no native bf16" in r.getMessage() for r in caplog.records) == 1
    store = Store(str(store_dir))
    recs = list(store.records())
    assert [r.fingerprints["video"]["precision"] for r in recs] == ["bf16 autocast"] * 2
    assert recs[0].fingerprints == recs[1].fingerprints and store.verify().ok
    from vod2chat.launch.tables import store_table
    assert "precision: bf16" in store_table(str(store_dir)).splitlines()

    # An explicit other precision is refused before anything starts, naming the store's.
    with pytest.raises(PrecisionMismatch, match="computes its features in bf16.*--precision fp32"):
        main(cfg_for(store_dir, vods / "v1", precision="fp32", replace=True))
    assert [r.name for r in store.records()] == ["p/700", "p/701"]


def test_explicit_other_precision_exits_2_with_one_line(vods: Path, tmp_path: Path, local_ray, capsys,
                                                         monkeypatch: pytest.MonkeyPatch):
    from vod2chat.launch.cli import main as cli

    monkeypatch.delenv(ENV, raising=False)
    store = Store(str(tmp_path / "store"))
    store.pin_precision("bf16")
    rc = cli(["ingest", "--store", str(tmp_path / "store"), "--streamer", "p", "--weights", "random",
              "--precision", "fp32", "--no-progress", str(vods / "v0")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "in bf16" in err and "--precision fp32" in err


def test_a_checkpoint_on_other_features_is_refused_in_one_line_naming_the_field():
    from vod2chat.trainer.checkpoint import check_fingerprints

    run = {"video": {**FP["video"], "precision": "fp32"}, "audio": {**FP["audio"], "precision": "fp32"}}
    store = {"video": {**FP["video"], "precision": "bf16 autocast"}, "audio": {**FP["audio"], "precision": "bf16 autocast"}}
    check_fingerprints({"fingerprints": run}, run, "S")
    with pytest.raises(ValueError) as e:
        check_fingerprints({"fingerprints": run}, store, "S")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("store S:") and "model" not in msg
    assert "video precision 'bf16 autocast' here, 'fp32' in the checkpoint" in msg
    assert "audio precision 'bf16 autocast' here, 'fp32' in the checkpoint" in msg


# -- numbers that say where they came from ---------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def test_every_benchmark_that_prints_a_table_names_the_machine():
    tables = sorted(p.name for p in (REPO / "bench").glob("*.py") if "|---" in p.read_text())
    assert {"generate.py", "ingest.py", "live.py", "moment.py", "moment_band.py", "train.py"} <= set(tables)
    assert [n for n in tables if "machine_line(" not in (REPO / "bench" / n).read_text()] == []


def test_a_benchmark_prints_cpu_bf16_and_precision_before_its_table(monkeypatch: pytest.MonkeyPatch):
    import os
    import subprocess
    import sys

    from vod2chat.ingest.precision import cpu_model

    env = {**os.environ, "OMP_NUM_THREADS": "1", ENV: "fp32"}
    r = subprocess.run([sys.executable, str(REPO / "bench/generate.py"), "--d-model", "32", "--n-dec-layers", "1",
                        "--messages", "2", "--batch", "2", "--max-new-tokens", "2"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    machine = next(i for i, line in enumerate(lines) if line.startswith("machine: "))
    assert machine < next(i for i, line in enumerate(lines) if line.startswith("| decoding"))
    assert f"CPU {cpu_model()}" in lines[machine] and "bf16 native: " in lines[machine]
    assert f"{ENV}=fp32" in lines[machine] and "precision: model fp32" in lines[machine]
