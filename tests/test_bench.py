"""The benchmark scripts run (``--quick``: tiny sizes) and write result files the report can render.

No timing is asserted: these are smoke tests of bench/, not measurements.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("timm")

from bench import (  # noqa: E402
    ab,
    common,
    inference,
    lowshot,
    masking,
    op_profile,
    parts,
    preprocess,
    pretrain_e2e,
    pretrain_step,
    report,
    threads,
)

ROOT = Path(__file__).resolve().parents[1]
MACHINE_KEYS = {"cpu", "cores", "torch", "torch_threads", "date", "loadavg", "loadavg_end", "cuda"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench_results")


def read(results_dir: Path, name: str) -> dict:
    data = json.loads((results_dir / f"{name}.json").read_text())
    assert set(common.RESULT_KEYS) <= set(data), set(common.RESULT_KEYS) - set(data)
    assert data["name"] == name and data["quick"] is True
    assert MACHINE_KEYS <= set(data["machine"])
    assert "--quick" in data["command"]
    for t in data["targets"]:
        assert {"name", "value", "threshold", "met", "margin"} <= set(t)
    return data


def test_matmul_peak_as_a_script(results_dir):
    subprocess.run(
        [sys.executable, "bench/matmul_peak.py", "--quick", "--results-dir", str(results_dir)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    data = read(results_dir, "matmul_peak")
    assert data["results"]["cpu"]["peak_gflops"] > 0
    assert "skipped" in data["results"]["gpu"] or "fp32" in data["results"]["gpu"]


def test_inference(results_dir):
    inference.main(["--quick", "--results-dir", str(results_dir)])
    data = read(results_dir, "inference")
    res = data["results"]
    libs = {(r["model"], r["batch"], r["library"]) for r in res["rows"]}
    assert len(libs) == len(inference.MODELS) * len(inference.QUICK_BATCHES) * len(inference.LIBRARIES)
    for r in res["rows"]:
        assert r["images_per_s"] > 0 and 0 < r["peak_share"]
        assert r["max_abs_diff_vs_transformers_eager"] < 1e-4  # the same weights in every library
    assert {"vs_transformers", "vs_timm", "cls_features_vs_timm", "vitmsn_peak_share"} <= set(res["ratios"][0])
    assert data["targets"]


def test_cls_only_flops():
    """The CLS-only last block: every token's keys and values, one token's attention, projection and MLP."""
    full, one = inference.block_flops(197, 768, 3072), inference.cls_block_flops(197, 768, 3072)
    assert one == 2 * 197 * 768 * 3 * 768 + 2 * 197 * 768 * 2 + 2 * 768 * 768 + 2 * 768 * 3072 * 2
    assert 0.2 < one / full < 0.3  # qkv of every token is a quarter of a block
    f = inference.vit_flops(768, 12, 3072)
    assert f["total"] - f["total_cls_only"] == full - one


def test_vit_flops():
    # ViT-B/16 at 224: 17.6 GMACs (timm / fvcore count the same matmuls)
    f = inference.vit_flops(hidden_size=768, num_hidden_layers=12, intermediate_size=3072)
    assert 17.4e9 < f["total"] / 2 < 17.7e9


def test_parts(results_dir):
    parts.main(["--quick", "--results-dir", str(results_dir)])
    rows = read(results_dir, "parts")["results"]["rows"]
    assert {"adamw", "target", "resize"} <= {r["part"] for r in rows}
    assert all(r["median_s"] > 0 for r in rows)


def test_pretrain_e2e(results_dir):
    pretrain_e2e.main(["--quick", "--results-dir", str(results_dir)])
    res = read(results_dir, "pretrain_e2e")["results"]
    sides = {r["side"]: r for r in res["rows"]}
    assert {"vitmsn", "vitmsn-workers"} <= set(sides)
    assert all(0 < r["views_median_s"] < r["median_s"] for r in sides.values())  # the views are part of a step


def test_threads(results_dir):
    threads.main(["--quick", "--results-dir", str(results_dir)])
    data = read(results_dir, "threads")
    conditions = data["config"]["conditions"]
    assert conditions[:3] == ["never", "same", "toggle"]
    rows = data["results"]["rows"]
    assert len(rows) == len(conditions) * (len(threads.WORKLOADS) + 1)  # + "views + step"
    assert all(r["median_ms"] > 0 for r in rows)
    assert all(r["ratio_to_never"] == 1 for r in rows if r["condition"] == "never")


def test_op_profile(results_dir):
    op_profile.main(["--quick", "--results-dir", str(results_dir)])
    res = read(results_dir, "op_profile")["results"]
    for r in res.values():
        assert abs(sum(o["share"] for o in r["ops"]) - 1) < 1e-6
        assert r["groups"]["matmul"] > 0 and r["ops"][0]["share"] >= r["ops"][-1]["share"]


def test_masking(results_dir):
    masking.main(["--quick", "--results-dir", str(results_dir)])
    data = read(results_dir, "masking")
    rows = data["results"]["cpu"]["rows"]
    assert [r["keep_ratio"] for r in rows[: len(masking.RATIOS)]] == list(masking.RATIOS)
    assert len(data["targets"]) == len(masking.RATIOS) - 1


def test_preprocess(results_dir):
    pytest.importorskip("skimage")
    preprocess.main(["--quick", "--results-dir", str(results_dir)])
    data = read(results_dir, "preprocess")
    rows = {r["case"]: r for r in data["results"]["rows"]}
    assert set(rows) == {"vitmsn-pil", "vitmsn-torch", "transformers-pil", "transformers-torchvision"}
    assert rows["vitmsn-pil"]["max_abs_diff_vs_transformers_pil"] == 0.0


def test_ab(results_dir):
    ab.main(["--quick", "--results-dir", str(results_dir), "--variants", "vitmsn,dnn+gelu+add"])
    data = read(results_dir, "ab")
    rows = data["results"]["cases"][0]["rows"]
    assert [r["variant"] for r in rows] == ["reference", "vitmsn", "dnn+gelu+add"]
    assert all(r["max_abs_diff_vs_reference"] < 1e-4 for r in rows)


def test_pretrain_step(results_dir):
    pytest.importorskip("lightly")
    pretrain_step.main(["--quick", "--threads", "1", "--results-dir", str(results_dir)])
    data = read(results_dir, "pretrain_step")
    res = data["results"]
    assert res["lightly"] == {"used": True}
    assert "skipped" in res["gpu"] or "configs" in res["gpu"]
    configs = res["cpu"]["configs"]
    assert [c["config"] for c in configs] == list(pretrain_step.CONFIGS)
    for c in configs:
        assert {r["side"] for r in c["rows"]} == {"vitmsn", "lightly"}
        assert all(r["images_per_s"] > 0 and r["peak_memory_mb"] > 0 for r in c["rows"])
        assert c["speedup"] > 0 and c["memory_ratio"] > 0
        assert c["kept_tokens"]["vitmsn"] == c["kept_tokens"]["lightly"]  # the same masking ratio
        assert c["settings"]["batch_size"] == pretrain_step.CONFIGS[c["config"]]["quick"]["batch_size"]
        # the same weights, views and kept tokens give the same loss and gradient norm on both sides
        first, second = c["parity"]["steps"]
        assert first["loss_abs_diff"] < 1e-4 and first["grad_norm_rel_diff"] < 1e-4
        assert second["loss_abs_diff"] < 1e-3
        for side in ("vitmsn", "lightly"):
            assert c["memory"][side]["rss_increase_mb"] > 0
    assert len(data["targets"]) == 2 * len(configs)
    assert data["config"]["settings"]["fashion-mnist"]["rand_size"] == 28


def test_pretrain_step_without_lightly(tmp_path, monkeypatch):
    # lightly not importable: the script still runs, times vitmsn alone and says why
    for mod in [m for m in sys.modules if m == "lightly" or m.startswith("lightly.")] + ["lightly"]:
        monkeypatch.setitem(sys.modules, mod, None)  # None in sys.modules: import raises ImportError
    ok, why = pretrain_step.lightly_available()
    assert not ok and "lightly" in why
    pretrain_step.main(
        [
            "--quick",
            "--threads",
            "1",
            "--repeats",
            "1",
            "--configs",
            "fashion-mnist",
            "--results-dir",
            str(tmp_path),
        ]
    )
    data = read(tmp_path, "pretrain_step")
    assert data["results"]["lightly"]["used"] is False
    assert data["results"]["lightly"]["skipped"].startswith("skipped: lightly is not importable")
    (c,) = data["results"]["cpu"]["configs"]
    assert [r["side"] for r in c["rows"]] == ["vitmsn"] and "parity" not in c
    assert data["targets"] == []


def test_lowshot_as_a_script(results_dir):
    pytest.importorskip("sklearn")
    from vitmsn.data.fashion_mnist import load_fashion_mnist

    try:
        load_fashion_mnist("test", download=False)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    subprocess.run(
        [sys.executable, "bench/lowshot.py", "--quick", "--threads", "1", "--results-dir", str(results_dir)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    data = read(results_dir, "lowshot")
    cpu = data["results"]["cpu"]
    rows = {r["phase"]: r for r in cpu["rows"]}
    assert rows["train features"]["images"] == lowshot.QUICK_TRAIN == data["config"]["train_images"]
    assert rows["test features"]["images"] == lowshot.QUICK_TEST
    assert all(r["median_s"] > 0 for r in cpu["rows"])
    assert [r["shots"] for r in cpu["logistic_regression"]] == list(lowshot.SHOTS)
    assert all(
        r["splits"] == 3 and r["test_images"] == lowshot.QUICK_TEST for r in cpu["logistic_regression"]
    )
    assert cpu["logistic_regression"][0]["train_images"] == 10  # 1 per class, 10 classes
    assert cpu["knn"]["k"] == 20 and cpu["knn"]["train_images"] == lowshot.QUICK_TRAIN
    assert data["config"]["model_config"]["hidden_size"] == 128
    assert "skipped" in data["results"]["gpu"] or "rows" in data["results"]["gpu"]
    assert data["targets"] == []


def test_report_renders(results_dir, tmp_path):
    # runs after the tests above have written their files (pytest keeps the order of a module)
    out = report.main(["--results-dir", str(results_dir), "--out", str(tmp_path / "B.md")])
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    for name in ("matmul_peak", "inference", "masking", "ab", "pretrain_step"):
        assert f"## {name}" in text  # a section each, measured or "not measured yet"
    assert "QUICK RUN" in text
    assert "not written yet" not in text
    assert "| vit_small_patch16_224 | 1 |" in text
    if (results_dir / "pretrain_step.json").exists():  # skipped without lightly
        assert "| fashion-mnist | vitmsn |" in text and "| fashion-mnist | lightly |" in text
        assert "pretrain_step (quick) | fashion-mnist cpu b16: vitmsn / lightly images/s" in text
    if (results_dir / "lowshot.json").exists():  # skipped without Fashion-MNIST
        assert "| train features |" in text and "| 10 | 3 | 100 |" in text


def test_report_with_no_results(tmp_path):
    out = report.main(["--results-dir", str(tmp_path), "--out", str(tmp_path / "B.md")])
    text = out.read_text()
    assert "No results with targets yet." in text
    for name in report.SCRIPTS:  # every script listed, none measured
        assert f"| `bench/{name}.py` |" in text and f"## {name}" in text
    assert text.lower().count("not measured yet") == 2 * len(report.SCRIPTS)
