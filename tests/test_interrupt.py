"""Stopping a run with Ctrl-C (SIGINT) or SIGTERM: the step finishes, latest.pt is saved as a mid-epoch
checkpoint, one line says how to continue, the exit code is 130 / 143, and --resume ends exactly as an
uninterrupted run. Also: damaged fine-tuning runs and small command-line checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from tests.test_finetune_predict import FAST, data_dir, model_dir  # noqa: F401  (fixtures)
from tests.test_pretrain import SMALL, cli, write_idx
from vitmsn.cli import main
from vitmsn.training import StopRequests, load_checkpoint

# the tiny pretraining of test_pretrain, without its checkpoint every step: 6 steps an epoch, 18 in all
SMALL_NO_EXTRA_CHECKPOINTS = [a for a in SMALL if a != "checkpoint_every_steps=1"]
SMALL_NO_EXTRA_CHECKPOINTS = [a for i, a in enumerate(SMALL_NO_EXTRA_CHECKPOINTS)
                              if not (a == "--set" and SMALL_NO_EXTRA_CHECKPOINTS[i + 1].startswith("--"))]


class _Terminated(Exception):
    pass


@pytest.fixture(autouse=True)
def _sigterm_raises():
    """SIGTERM raises in this process instead of ending pytest (what a run must restore after its loop)."""
    def raise_(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, raise_)
    yield
    signal.signal(signal.SIGTERM, previous)


def _same_weights(a: dict, b: dict, parts: tuple[str, ...]) -> None:
    for part in parts:
        assert a[part].keys() == b[part].keys()
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k} differs after resume"


def test_pretrain_stopped_by_a_signal_saves_and_resumes_exactly(tmp_path):
    assert "checkpoint_every_steps=1" not in SMALL_NO_EXTRA_CHECKPOINTS
    data = write_idx(tmp_path / "fm")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_args = ["pretrain", "--preset", "fashion-mnist", "--data", str(data), *SMALL_NO_EXTRA_CHECKPOINTS]
    full = subprocess.run(cli(*run_args, "--out", str(tmp_path / "full")), env=env, capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")

    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        run = tmp_path / sig.name
        p = subprocess.Popen(cli(*run_args, "--out", str(run)), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        log, deadline = run / "log.csv", time.time() + 120
        while time.time() < deadline and p.poll() is None:  # a step has been logged: the loop runs
            if log.exists() and len(log.read_text().splitlines()) >= 2:
                break
            time.sleep(0.005)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        assert p.returncode == code, err[-2000:]
        latest = run / "checkpoints" / "latest.pt"
        stopped_at = load_checkpoint(latest)["step"]
        assert 1 <= stopped_at < 18, stopped_at
        line = (f"stopped at step {stopped_at}; saved {latest}; continue with: vitmsn pretrain --resume "
                f"--out {run}")
        assert line in err.splitlines(), err[-2000:]
        assert "Traceback" not in err and "interrupted" not in err

        resumed = subprocess.run(cli("pretrain", "--resume", "--out", str(run), "--no-progress"), env=env,
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert f"resumed {run} at step {stopped_at}" in resumed.stderr
        b = load_checkpoint(latest)
        assert a["step"] == b["step"] == 18
        _same_weights(a, b, ("online", "target"))
        assert torch.equal(a["prototypes"], b["prototypes"])
        rows = [r.split(",") for r in (run / "log.csv").read_text().splitlines()[1:]]
        assert [int(r[0]) for r in rows] == list(range(1, 19))  # every step logged once
        full_rows = [r.split(",") for r in (tmp_path / "full" / "log.csv").read_text().splitlines()[1:]]
        loss = (tmp_path / "full" / "log.csv").read_text().splitlines()[0].split(",").index("loss")
        assert rows[-1][loss] == full_rows[-1][loss]  # the same final loss


def _signal_at_step(monkeypatch, step: int, sig: int) -> None:
    """Send ``sig`` to this process as fine-tuning step ``step`` (1-based) begins: it finishes, then stops."""
    from vitmsn.eval import finetune as ft

    set_lr, calls = ft.set_scaled_lr, []

    def set_lr_then_signal(optimizer, value):
        set_lr(optimizer, value)
        calls.append(value)
        if len(calls) == step:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(ft, "set_scaled_lr", set_lr_then_signal)


@pytest.mark.parametrize("sig,code,at", [(signal.SIGTERM, 143, 4), (signal.SIGINT, 130, 2)])
def test_finetune_stopped_by_a_signal_saves_and_resumes_exactly(model_dir, data_dir, tmp_path, capsys,  # noqa: F811
                                                                monkeypatch, sig, code, at):
    from vitmsn.eval.finetune import finetune

    before = signal.getsignal(sig)
    full = finetune(str(model_dir), str(data_dir), tmp_path / "full", epochs=2, val_fraction=0.25, seed=3, **FAST)
    run = tmp_path / "cut"
    argv = ["finetune", "--model", str(model_dir), "--data", str(data_dir), "--out", str(run), "--epochs", "2",
            "--batch-size", "8", "--lr", "1e-3", "--warmup-epochs", "1", "--val-fraction", "0.25", "--seed", "3",
            "--no-tensorboard", "--no-progress"]
    with monkeypatch.context() as m:
        _signal_at_step(m, at, sig)
        assert main(argv) == code  # 3 steps an epoch: stopped mid-epoch, with no checkpoint there before
    assert signal.getsignal(sig) == before  # the handler was only there while the loop ran
    err = capsys.readouterr().err
    latest = run / "checkpoints" / "latest.pt"
    assert f"stopped at step {at}; saved {latest}; continue with: vitmsn finetune --out {run} --resume" \
        in err.splitlines(), err
    assert load_checkpoint(latest)["step"] == at
    assert main(["finetune", "--out", str(run), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "best model:" in out and out.count("stopped at step") == 0
    a, b = load_checkpoint(full / "checkpoints" / "latest.pt"), load_checkpoint(latest)
    assert a["step"] == b["step"] == 6
    _same_weights(a, b, ("model",))
    assert json.loads((full / "metrics.json").read_text())["epochs"] == \
        json.loads((run / "metrics.json").read_text())["epochs"]


def test_max_steps_stop_of_finetune_is_said_once(model_dir, data_dir, tmp_path, capsys, caplog):  # noqa: F811
    assert main(["finetune", "--model", str(model_dir), "--data", str(data_dir), "--out", str(tmp_path / "ft"),
                 "--epochs", "2", "--batch-size", "8", "--max-steps", "1", "--no-tensorboard", "--no-progress"]) == 0
    captured = capsys.readouterr()
    said = captured.out + captured.err + caplog.text
    assert said.count("stopped at step 1") == 1, said


def test_a_second_ctrl_c_stops_at_once_and_handlers_are_restored():
    before_int, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopRequests(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # already stopping: nothing more
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) == before_int and signal.getsignal(signal.SIGTERM) == before_term


# ------------------------------------------------------------------------------ damaged fine-tuning runs


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_damaged_finetune_run_is_one_line_naming_the_file(model_dir, data_dir, tmp_path, capsys):  # noqa: F811
    from vitmsn.eval.finetune import finetune

    run = finetune(str(model_dir), str(data_dir), tmp_path / "ft", epochs=1, max_steps=1, val_fraction=0.25, **FAST)
    capsys.readouterr()
    settings = run / "finetune.json"
    good = settings.read_text()
    resume = ["finetune", "--out", str(run), "--resume", "--no-progress"]
    for damaged, says in ((json.dumps({**json.loads(good), "epochs": "x"}), "epochs must be a whole number"),
                          ("[]", "does not hold fine-tuning settings"),
                          ('{"epochs": 1 "lr": 2}', "is not a JSON file")):
        settings.write_text(damaged)
        assert main(resume) == 2
        _one_error_line(capsys, str(settings), says)
    settings.write_text(good)
    latest = run / "checkpoints" / "latest.pt"
    whole = latest.read_bytes()
    for cut in (len(whole) // 100, len(whole) // 2):
        latest.write_bytes(whole[:cut])
        assert main(resume) == 2
        err = _one_error_line(capsys, str(latest), "cannot continue from it")
        assert "WARNING" not in err  # refused before the model was loaded


# ------------------------------------------------------------------------------------- command line


def test_verbose_after_the_subcommand_and_help_texts(capsys):
    from vitmsn.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["info", "-v", "--model", "m"]).verbose
    assert parser.parse_args(["-v", "info", "--model", "m"]).verbose
    assert not parser.parse_args(["info", "--model", "m"]).verbose
    assert parser.parse_args(["convert", "msn", "a", "b", "-v"]).verbose
    for command in ("lowshot", "quickstart", "extract", "finetune", "pretrain"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--no-progress no progress bar" in text, command
        assert "-v, --verbose" in text, command


@pytest.mark.parametrize("option,value,message", [
    ("--max-steps", "-1", "max_steps must be a whole number >= 0"),
    ("--seed", "-1", "seed must be a whole number >= 0"),
    ("--clip-grad", "0", "clip_grad must be a number > 0 (leave --clip-grad out for no clipping), got 0"),
])
def test_finetune_refuses_negative_steps_seeds_and_zero_clipping(model_dir, data_dir, tmp_path, capsys,  # noqa: F811
                                                                  option, value, message):
    out = tmp_path / "ft"
    argv = ["finetune", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out), option, value,
            "--no-progress", "--no-tensorboard", "--device", "cpu"]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_one_file_outputs_are_not_overwritten_silently(model_dir, data_dir, tmp_path, capsys):  # noqa: F811
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"keep")
    assert main(["export-onnx", "--model", str(model_dir), "--out", str(onnx)]) == 2
    _one_error_line(capsys, f"{onnx} exists: pass --overwrite")
    assert onnx.read_bytes() == b"keep"
    assert main(["export-onnx", "--model", str(model_dir), "--out", str(tmp_path)]) == 2
    _one_error_line(capsys, "is a directory")
    npz = tmp_path / "feats.npz"
    npz.write_bytes(b"keep")
    for out in (npz, tmp_path / "feats"):  # .npz is appended: feats -> feats.npz
        assert main(["extract", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out),
                     "--no-progress"]) == 2
        _one_error_line(capsys, f"{npz} exists: pass --overwrite")
    assert npz.read_bytes() == b"keep"
    assert main(["extract", "--model", str(model_dir), "--data", str(data_dir), "--out", str(npz), "--overwrite",
                 "--no-progress", "--batch-size", "8"]) == 0
    assert npz.read_bytes() != b"keep"
