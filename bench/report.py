"""Render docs/BENCHMARKS.md from the result files in bench/results/ and the notes in bench/notes.md.

python bench/report.py [--results-dir bench/results] [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS_DIR, ROOT  # noqa: E402

OUT = ROOT / "docs" / "BENCHMARKS.md"
NOTES = ROOT / "bench" / "notes.md"
#: every benchmark script, in the order of the report; ``None``: not written yet
SCRIPTS = {
    "matmul_peak": "the machine's fp32 matmul peak",
    "inference": "CPU inference: vitmsn vs transformers vs timm",
    "ab": "A/B of the CPU fast path's parts (what vitmsn ships, what was tried)",
    "masking": "MSN token dropping: forward + backward vs keep ratio",
    "preprocess": "image preprocessing: vitmsn vs transformers",
    "pretrain_step": "MSN pretraining step: vitmsn vs lightly's MSN parts (images/s, peak memory)",
    "lowshot": "low-shot evaluation wall time: features + logistic regression on Fashion-MNIST 60k/10k",
    "parts": "the parts behind the pretraining-step and preprocessing changes, each against its alternative",
    "pretrain_e2e": "MSN pretraining with the views made: vitmsn vs lightly's MSNTransform + MSN parts",
    "op_profile": "where the time goes: torch.profiler's operator shares in vitmsn's inference and pretraining step",
    "threads": "what a torch.set_num_threads call does to the work after it, in fresh processes",
}
NOT_MEASURED = "not measured yet"


def load_results(results_dir: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        data = json.loads(path.read_text())
        out[data.get("name", path.stem)] = data
    return out


# -------------------------------------------------------------------------------------------- formatting


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def f(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def loadavg(m: dict) -> str:
    start = m.get("loadavg") or []
    end = m.get("loadavg_end") or []
    s = "/".join(f"{v:.2f}" for v in start) or "?"
    if end:
        s += " at start, " + "/".join(f"{v:.2f}" for v in end) + " at end (1/5/15 min)"
    return s


def header(data: dict) -> str:
    m = data["machine"]
    libs = ", ".join(
        f"{k} {m[k]}" for k in ("transformers", "timm", "lightly", "torchvision", "pillow") if m.get(k)
    )
    lines = [
        f"- command: `{data['command']}`",
        f"- date: {m['date']}; load average: {loadavg(m)}",
        f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} threads "
        f"(CPU capability {m.get('cpu_capability')}), GPU: {m.get('gpu') or 'none'}",
        f"- libraries: {libs}",
    ]
    if data.get("quick"):
        lines.insert(
            0, "- **QUICK RUN (`--quick`): tiny sizes, 1-2 repeats; a smoke test, not a measurement.**"
        )
    return "\n".join(lines)


def target_rows(name: str, targets: list[dict]) -> list[list[str]]:
    rows = []
    for t in targets:
        better = ">=" if t["higher_is_better"] else "<="
        verdict = "met" if t["met"] else "**missed**"
        rows.append(
            [
                name,
                t["name"],
                f"{t['value']:.3f}",
                f"{better} {t['threshold']:.3f}",
                verdict,
                f"{100 * t['margin']:+.1f}%",
            ]
        )
    return rows


def targets_table(name: str, targets: list[dict]) -> str:
    if not targets:
        return ""
    return "Targets (margin: how far past the threshold; negative = missed by that much):\n\n" + table(
        ["benchmark", "target", "measured", "threshold", "verdict", "margin"], target_rows(name, targets)
    )


# ------------------------------------------------------------------------------------------ benchmarks


def render_matmul_peak(d: dict) -> str:
    cpu = d["results"]["cpu"]
    # per size: {matmul: numbers} (since 2026-12-07: torch.mm and oneDNN), or the numbers of torch.mm alone
    sizes = {n: (r if "best_gflops" not in r else {"torch.mm": r}) for n, r in cpu["sizes"].items()}
    rows = [[n, kind, f(r["best_gflops"]), f(r["median_gflops"])] for n, kinds in sizes.items()
            for kind, r in kinds.items()]
    out = [
        f"Measured fp32 peak: **{cpu['peak_gflops']:.1f} GFLOP/s** ({cpu['threads']} threads, best of "
        f"{d['config']['repeats']} per size and matmul).",
        "",
        table(["n (square matmul)", "matmul", "best GFLOP/s", "median GFLOP/s"], rows),
    ]
    out.append(gpu_line(d["results"].get("gpu", {})))
    return "\n".join(out)


def gpu_line(gpu: dict) -> str:
    if "skipped" in gpu:
        return f"\nGPU variants: {gpu['skipped']}."
    return "\nGPU variants:\n\n```json\n" + json.dumps(gpu, indent=1)[:3000] + "\n```"


def bound_at_peak(res: dict, ratio: dict) -> float:
    """vitmsn / the faster transformers path if vitmsn ran every FLOP at the run's higher matmul peak: the
    most any implementation of the same FLOPs could reach against transformers' speed in that run."""
    theirs = next(r for r in res["rows"] if (r["model"], r["batch"], r["library"])
                  == (ratio["model"], ratio["batch"], ratio["faster_transformers"]))
    return res["peak_gflops"] / theirs["gflops"]


def render_inference(d: dict) -> str:
    res = d["results"]
    out = [
        f"fp32 matmul peak measured in the same run: {res['peak_gflops']:.1f} GFLOP/s (before "
        f"{res['peak_gflops_before']:.1f}, after {res['peak_gflops_after']:.1f}). Images/s are medians of "
        f"{d['config']['repeats']} interleaved repeats; GFLOP/s counts the model's matmul FLOPs "
        "(`vit_flops` in `bench/inference.py`; for `vitmsn-cls`, whose last block runs for the CLS token "
        "only, the FLOPs it computes); max|diff| is the CLS feature's largest difference from "
        "transformers-eager on the same weights."
    ]
    models = sorted({r["model"] for r in res["rows"]}, key=lambda m: ("base" in m, m))
    for model in models:
        out += ["", f"#### {model}", ""]
        rows = []
        for r in res["rows"]:
            if r["model"] != model:
                continue
            rows.append(
                [
                    r["batch"],
                    r["library"],
                    f(r["images_per_s"], 2),
                    f(r["median_s"] * 1e3),
                    f(r["gflops"]),
                    f(100 * r["peak_share"]),
                    f"{r['max_abs_diff_vs_transformers_eager']:.1e}",
                ]
            )
        out.append(
            table(
                ["batch", "library", "images/s", "ms / batch", "GFLOP/s", "% of the peak before", "max abs diff"], rows
            )
        )
    out += ["", "Ratios (vitmsn images/s divided by the other's):", ""]
    out.append(
        table(
            [
                "model",
                "batch",
                "vitmsn / faster transformers",
                "faster transformers path",
                "vitmsn / timm",
                "vitmsn-cls / timm (CLS features both)",
                "vitmsn % of matmul peak (before / the higher of before and after)",
                "at 100 % of the higher peak: x the faster transformers path",
            ],
            [
                [
                    r["model"],
                    r["batch"],
                    f(r["vs_transformers"], 3),
                    r["faster_transformers"],
                    f(r["vs_timm"], 3),
                    f(r["cls_features_vs_timm"], 3) if "cls_features_vs_timm" in r else "",
                    f(100 * r["vitmsn_peak_share"]) + (f" / {f(100 * r['vitmsn_peak_share_of_higher_peak'])}"
                                                       if "vitmsn_peak_share_of_higher_peak" in r else ""),
                    f(bound_at_peak(res, r), 2),
                ]
                for r in res["ratios"]
            ],
        )
    )
    out.append(gpu_line(res.get("gpu", {})))
    return "\n".join(out)


def render_ab(d: dict) -> str:
    out = [
        "Each variant replaces `Block.forward` of the same vitmsn model; speed-up relative to `reference` "
        "(the plain `F.linear` path, as transformers and timm run), medians of interleaved repeats.",
        "",
    ]
    out.append(table(["variant", "what"], [[k, v] for k, v in d["config"]["variants"].items()]))
    for case in d["results"]["cases"]:
        out += ["", f"#### {case['model']}, batch {case['batch']} ({case['repeats']} repeats)", ""]
        out.append(
            table(
                ["variant", "images/s", "GFLOP/s", "speed-up", "max abs diff"],
                [
                    [
                        r["variant"],
                        f(r["images_per_s"], 2),
                        f(r["gflops"]),
                        f(r["speedup_vs_reference"], 3),
                        f"{r['max_abs_diff_vs_reference']:.1e}",
                    ]
                    for r in case["rows"]
                ],
            )
        )
    return "\n".join(out)


def render_masking(d: dict) -> str:
    cpu = d["results"]["cpu"]
    out = [
        f"{cpu['model']}, batch {cpu['batch']}, {cpu['num_patches']} patches; forward + backward of the backbone. "
        "`1.0-gather` keeps every patch through `keep_idx` (a random order): the cost of the gather alone.",
        "",
    ]
    rows = [
        [
            r["case"],
            r["kept_patches"],
            r["tokens"],
            f(r["median_s"] * 1e3),
            f(r["relative_time"], 3),
            f(r["bound"], 2),
            ("yes" if r["relative_time"] <= r["bound"] else "**no**"),
        ]
        for r in cpu["rows"]
    ]
    out.append(
        table(
            [
                "keep ratio",
                "kept patches",
                "tokens",
                "ms / step",
                "time / time(1.0)",
                "bound r + 0.1",
                "within bound",
            ],
            rows,
        )
    )
    out.append(gpu_line(d["results"].get("gpu", {})))
    return "\n".join(out)


def render_preprocess(d: dict) -> str:
    res = d["results"]
    out = [
        f"{d['config']['batch']} photographs (PIL images of varied sizes) -> "
        f"{tuple(d['config']['output'])} float32; medians of {d['config']['repeats']} interleaved repeats.",
        "",
    ]
    out.append(
        table(
            ["case", "images/s", "ms / batch", "max abs diff vs transformers-pil"],
            [
                [
                    r["case"],
                    f(r["images_per_s"]),
                    f(r["median_s"] * 1e3),
                    f"{r['max_abs_diff_vs_transformers_pil']:.2e}",
                ]
                for r in res["rows"]
            ],
        )
    )
    out += ["", table(["ratio", "value"], [[k, f"{v:.2f}x"] for k, v in res["ratios"].items()])]
    out.append(gpu_line(res.get("gpu", {})))
    return "\n".join(out)


def _pretrain_tables(configs: list[dict]) -> list[str]:
    out = ["", "Configurations (the same for both sides; kept tokens include the class token):", ""]
    rows = []
    for c in configs:
        s = c["settings"]
        params = c["trainable_params"]
        rows.append(
            [
                c["config"],
                c["device"] + (" bf16" if s["bf16"] else ""),
                s["batch_size"],
                f"D{s['hidden_size']} x {s['num_hidden_layers']}, {s['num_attention_heads']} heads, "
                f"patch {s['patch_size']}",
                f"{s['rand_size']} / {s['focal_size']} px",
                f"1 + {s['rand_views']} + {s['focal_views']}",
                " / ".join(str(v) for v in c.get("kept_tokens", {"vitmsn": 1 + s["kept_patches"]}).values()),
                f"{s['head_hidden_dim']} / {s['head_output_dim']} / {s['num_prototypes']}",
                "yes" if s["use_sinkhorn"] else "no",
                " / ".join(f"{v / 1e6:.2f}M" for v in params.values()),
            ]
        )
    out.append(
        table(
            [
                "config",
                "device",
                "batch",
                "ViT",
                "rand / focal size",
                "views (target + rand + focal)",
                "kept tokens (vitmsn / lightly)",
                "head hidden / out / prototypes",
                "Sinkhorn",
                "trainable params (vitmsn / lightly)",
            ],
            rows,
        )
    )
    out += [
        "",
        "Images/s = batch / median seconds per step; GFLOP/s = the step's multiply-add FLOPs (`step_flops` in "
        "`bench/pretrain_step.py`: forward of anchors and target, backward as 2 x the anchors' forward) per "
        "second, and their share of the matmul peak measured in the same run; peak memory: see the notes below.",
        "",
    ]
    rows = []
    for c in configs:
        for r in c["rows"]:
            rows.append(
                [
                    c["config"],
                    r["side"],
                    f(r["images_per_s"], 1),
                    f(r["median_s"] * 1e3),
                    f(r.get("gflops")),
                    f"{100 * r['peak_share']:.0f}%" if "peak_share" in r else "–",
                    f(r["peak_memory_mb"], 0),
                    f"{c['repeats']} x {c['steps_per_repeat']}",
                ]
            )
    out.append(
        table(
            ["config", "side", "images/s", "ms / step", "GFLOP/s", "share of matmul peak",
             "peak memory, MiB (see notes)", "repeats x steps"],
            rows,
        )
    )
    bounds = [c for c in configs if "speedup_bound" in c]
    if bounds:
        out += ["", "The most any implementation could gain over lightly at fp32 on this machine, if the whole "
                "work the step needs (the last block counted for the CLS token only) ran at the matmul peak: " + "; ".join(
                    f"{c['config']} {c['speedup_bound']:.2f}x ({c['flops_per_step']['total'] / 1e9:.1f} GFLOP "
                    "per step)" for c in bounds) + "."]
    with_lightly = [c for c in configs if "speedup" in c]
    if with_lightly:
        out += ["", "vitmsn / lightly, and the parity check (same weights, views and kept tokens):", ""]
        rows = []
        for c in with_lightly:
            first, second = c["parity"]["steps"]
            rows.append(
                [
                    c["config"],
                    f"{c['speedup']:.3f}x",
                    f"{c['memory_ratio']:.3f}x",
                    f"{first['loss_vitmsn']:.6f} / {first['loss_lightly']:.6f}",
                    f"{first['grad_norm_rel_diff']:.1e}",
                    f"{second['loss_vitmsn']:.6f} / {second['loss_lightly']:.6f}",
                ]
            )
        out.append(
            table(
                [
                    "config",
                    "images/s",
                    "peak memory",
                    "loss, step 0 (vitmsn / lightly)",
                    "grad norm rel. diff, step 0",
                    "loss, step 1 (vitmsn / lightly)",
                ],
                rows,
            )
        )
    return out


def render_pretrain_step(d: dict) -> str:
    res = d["results"]
    out = [
        "One MSN training step (masked random anchor and focal anchors through the online encoder and head, "
        "target through the EMA copy, MSN loss, backward, clipping, AdamW, EMA update) on synthetic views: "
        "data loading is not timed. vitmsn and lightly steps are timed interleaved."
    ]
    if not res["lightly"]["used"]:
        out += ["", f"lightly's side: {res['lightly']['skipped']}; vitmsn alone, no targets."]
    out += _pretrain_tables(res["cpu"]["configs"])
    gpu = res.get("gpu", {})
    if "configs" in gpu:
        out += ["", "#### GPU (bf16 autocast)"] + _pretrain_tables(gpu["configs"])
    else:
        out.append(gpu_line(gpu))
    return "\n".join(out)


def render_lowshot(d: dict) -> str:
    cfg, cpu = d["config"], d["results"]["cpu"]
    out = [
        f"Model: {cfg['model']} ({cfg['model_config'].get('hidden_size')} wide, "
        f"{cfg['model_config'].get('num_hidden_layers')} blocks, patch {cfg['model_config'].get('patch_size')}, "
        f"{cfg['model_config'].get('image_size')} px); {cfg['train_images']} train / {cfg['test_images']} test "
        f"images; feature batch {cfg['batch_size']}, {cfg['num_workers']} DataLoader workers, pooling "
        f"`{cfg['pool']}`; {cfg['threads']} threads for torch and scikit-learn; median of {cfg['repeats']} "
        "run(s). Each phase is timed on its own.",
        "",
    ]
    out.append(
        table(
            ["phase", "seconds", "images", "images/s"],
            [
                [
                    r["phase"],
                    f(r["median_s"], 2),
                    r.get("images", ""),
                    f(r["images_per_s"], 0) if "images" in r else "",
                ]
                for r in cpu["rows"]
            ]
            + [["**total**", f(cpu["total_s"], 2), "", ""]],
        )
    )
    out += ["", "Logistic regression (every fit also predicts the whole test split):", ""]
    out.append(
        table(
            ["labels per class", "splits", "train images per fit", "seconds", "seconds per fit"],
            [
                [r["shots"], r["splits"], r["train_images"], f(r["seconds"], 2), f(r["seconds_per_fit"], 3)]
                for r in cpu["logistic_regression"]
            ],
        )
    )
    gpu = d["results"].get("gpu", {})
    if "rows" in gpu:
        out += ["", "GPU feature extraction:", ""]
        out.append(
            table(
                ["phase", "seconds", "images/s"],
                [[r["phase"], f(r["median_s"], 2), f(r.get("images_per_s"), 0)] for r in gpu["rows"]],
            )
        )
    else:
        out.append(gpu_line(gpu))
    return "\n".join(out)


def render_parts(d: dict) -> str:
    rows = [[r["part"], r["case"], f(r["median_s"] * 1e3, 2)] for r in d["results"]["rows"]]
    return (f"Medians of {d['config']['repeats']} interleaved repeats; in each part the first case is what "
            "vitmsn ships.\n\n" + table(["part", "case", "ms per call"], rows))


def render_pretrain_e2e(d: dict) -> str:
    cfg, res = d["config"], d["results"]
    rows = [[r["side"], f(r["images_per_s"], 1), f(r["median_s"] * 1e3, 1), f(r["views_median_s"] * 1e3, 1),
             f"{100 * r['views_share']:.0f}%"] for r in res["rows"]]
    out = [f"{cfg['data']}; `{cfg['preset']}` preset, batch {cfg['batch_size']}, {cfg['threads']} threads, "
           f"everything in the main process; median of {cfg['repeats']} interleaved repeats of "
           f"{cfg['steps_per_repeat']} steps, each taking its views from the pipeline.", "",
           table(["pipeline", "images/s", "ms per step", "of which views (ms)", "views share"], rows)]
    if res["ratios"]:
        out += ["", "; ".join(f"{k}: {v:.2f}x images/s" for k, v in res["ratios"].items()) + "."]
    else:
        out += ["", f"lightly's side {res['lightly']['skipped']}."]
    return "\n".join(out)


def render_op_profile(d: dict) -> str:
    out = [f"Self CPU time per operator as a share of all operator time, over {d['config']['runs']} profiled "
           "runs after warm-up (`torch.profiler`)."]
    for name, r in d["results"].items():
        groups = ", ".join(f"{g} {100 * v:.1f}%" for g, v in r["groups"].items())
        rows = [[o["op"], o["group"], o["calls"] // r["runs"], f"{100 * o['share']:.1f}%"] for o in r["ops"][:10]]
        out += ["", f"#### {name}: {r['what']}", "",
                f"{r['self_cpu_ms_per_run']:.1f} ms of operator time per run; by group: {groups}.", "",
                table(["operator", "group", "calls per run", "share"], rows)]
    return "\n".join(out)


def render_threads(d: dict) -> str:
    cfg = d["config"]
    rows = [[r["workload"], r["condition"], f(r["median_ms"], 2), f(r["ratio_to_never"], 3),
             f"{r['ratio_min']:.3f} - {r['ratio_max']:.3f}"] for r in d["results"]["rows"]]
    return (f"{cfg['trials']} trials of one fresh process per condition ({', '.join(cfg['conditions'])}), "
            f"{cfg['threads']} threads; per process the median of interleaved repeats. Ratio: to the `never` "
            "process of the same trial.\n\n"
            + table(["workload", "condition", "median ms", "ratio to never", "min - max"], rows))


def render_generic(d: dict) -> str:
    return "```json\n" + json.dumps(d["results"], indent=1)[:4000] + "\n```"


RENDER = {
    "matmul_peak": render_matmul_peak,
    "inference": render_inference,
    "ab": render_ab,
    "masking": render_masking,
    "preprocess": render_preprocess,
    "pretrain_step": render_pretrain_step,
    "lowshot": render_lowshot,
    "parts": render_parts,
    "pretrain_e2e": render_pretrain_e2e,
    "op_profile": render_op_profile,
    "threads": render_threads,
}


# ---------------------------------------------------------------------------------------------- report


def render(results: dict[str, dict], notes: str | None = None) -> str:
    parts = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python bench/report.py` from bench/results/*.json and bench/notes.md; "
        "edit those, not this file. -->",
        "",
        "Run every benchmark, then this report (on 2 cores of an AMD EPYC on 2026-12-07: 23 minutes for the first "
        "five, 5.5 more for the next five and 7.5 for `threads.py`; run on a quiet machine — the load average is "
        "recorded with each result):",
        "",
        "```bash",
        'pip install -e ".[bench]"',
        "python bench/matmul_peak.py && python bench/inference.py && python bench/ab.py && "
        "python bench/masking.py && python bench/preprocess.py && python bench/pretrain_step.py --compile && "
        "python bench/lowshot.py && python bench/parts.py && python bench/pretrain_e2e.py && "
        "python bench/op_profile.py && python bench/threads.py",
        "python bench/report.py",
        "```",
        "",
        "Each script takes `--quick` (tiny sizes, a smoke test: `tests/test_bench.py` runs it) and "
        "`--results-dir`. GPU variants (bf16 autocast, flash SDPA, torch.compile) run only with CUDA; "
        "`pretrain_step.py --compile` adds a torch.compile row on every device.",
        "",
        "## Scripts",
        "",
    ]
    rows = []
    for name, what in SCRIPTS.items():
        d = results.get(name)
        if d is None:
            rows.append([f"`bench/{name}.py`", what, f"{NOT_MEASURED} (no result file)"])
        else:
            kind = "quick smoke run only" if d.get("quick") else "measured"
            rows.append([f"`bench/{name}.py`", what, f"{kind}, {d['machine']['date']}"])
    parts += [table(["script", "what", "status"], rows), ""]

    all_targets = []
    for name, d in results.items():
        all_targets += target_rows(name + (" (quick)" if d.get("quick") else ""), d.get("targets", []))
    parts += ["## Targets", ""]
    if all_targets:
        met = sum(1 for r in all_targets if r[4] == "met")
        parts += [
            f"{met} of {len(all_targets)} met. Margin: how far past the threshold (negative: missed by "
            "that much, relative to the threshold).",
            "",
            table(["benchmark", "target", "measured", "threshold", "verdict", "margin"], all_targets),
            "",
        ]
    else:
        parts += ["No results with targets yet.", ""]

    for name in [*SCRIPTS, *sorted(set(results) - set(SCRIPTS))]:
        d = results.get(name)
        if d is None:
            parts += [
                f"## {name}",
                "",
                f"{NOT_MEASURED.capitalize()}: no `{name}.json` in the results.",
                "",
            ]
            continue
        parts += [f"## {name}", "", header(d), "", RENDER.get(name, render_generic)(d), ""]
        for note in d.get("notes", []):
            parts.append(f"- {note}")
        if d.get("notes"):
            parts.append("")
    if notes:
        parts += [notes.strip(), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--notes", type=Path, default=NOTES)
    args = p.parse_args(argv)
    notes = args.notes.read_text() if args.notes.exists() else None
    text = render(load_results(args.results_dir), notes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
