"""Interleaved A/B of the ways to run a ViT block on the CPU: what vitmsn's fast path is made of.

Each variant replaces ``Block.forward`` (and for one, ``PatchEmbed.forward``) of the same vitmsn model;
all variants run in turn within each repeat (fp32, inference_mode, threads = cores). ``reference`` is the
plain path (``F.linear`` = MKL sgemm, separate GELU and residual adds, SDPA), as transformers and timm run;
``vitmsn`` is the library as shipped. Speed-ups are relative to ``reference``; ``max|diff|`` compares the
final tokens with it.

    python bench/ab.py [--quick] [--cases vit_base_patch16_224:32,vit_small_patch16_224:8]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_info, parser, setup_torch, summarize, time_interleaved, write_result  # noqa: E402
from bench.inference import MODELS, QUICK, vit_flops  # noqa: E402

NAME = "ab"
CASES = "vit_base_patch16_224:32,vit_base_patch16_224:8,vit_small_patch16_224:8,vit_small_patch16_224:1"
#: variant -> (what it changes, options); options: linear in {"F", "dnn", "dnn-packed", "mkl-packed"},
#: gelu fused into fc1, residual add fused into proj / fc2, attention "sdpa" or "math", patch "conv"/"matmul"
VARIANTS = {
    "reference": ("F.linear (MKL sgemm after a bias copy), separate GELU and adds, SDPA", None),
    "vitmsn": ("the library as shipped", "shipped"),
    "dnn": (
        "oneDNN linear (bias in the epilogue), GELU separate",
        dict(linear="dnn", gelu=False, add=False, attn="sdpa", patch="conv"),
    ),
    "dnn+gelu": (
        "oneDNN linear, GELU fused into fc1",
        dict(linear="dnn", gelu=True, add=False, attn="sdpa", patch="conv"),
    ),
    "dnn+gelu+add": (
        "... and the residual add fused into proj and fc2",
        dict(linear="dnn", gelu=True, add=True, attn="sdpa", patch="conv"),
    ),
    "dnn-packed+gelu": (
        "oneDNN linear with weights pre-packed to oneDNN's blocked layout, GELU fused",
        dict(linear="dnn-packed", gelu=True, add=False, attn="sdpa", patch="conv"),
    ),
    "mkl-packed": (
        "MKL sgemm with pre-packed weights (torch.ops.mkl._mkl_linear)",
        dict(linear="mkl-packed", gelu=False, add=False, attn="sdpa", patch="conv"),
    ),
    "dnn+gelu+chunk": (
        "oneDNN linear + fused GELU, each block run on chunks of ~1024 tokens (whole images)",
        dict(linear="dnn", gelu=True, add=False, attn="sdpa", patch="conv", chunk=1024),
    ),
    "dnn-packed+gelu+chunk": (
        "pre-packed oneDNN weights + fused GELU + chunks of ~1024 tokens",
        dict(linear="dnn-packed", gelu=True, add=False, attn="sdpa", patch="conv", chunk=1024),
    ),
    "dnn+gelu+math-attn": (
        "oneDNN linear + fused GELU, attention as q k^T, softmax, @ v",
        dict(linear="dnn", gelu=True, add=False, attn="math", patch="conv"),
    ),
    "dnn+gelu+patch-matmul": (
        "oneDNN linear + fused GELU, patch embedding as reshape + oneDNN matmul (the others: convolution)",
        dict(linear="dnn", gelu=True, add=False, attn="sdpa", patch="matmul"),
    ),
}


def variant_forwards(opts: dict, batch_tokens: int):
    """(Block.forward, PatchEmbed.forward) implementing ``opts``."""
    import torch
    import torch.nn.functional as F

    lp = torch.ops.mkldnn._linear_pointwise
    packed: dict[int, torch.Tensor] = {}

    def pack(w: torch.Tensor) -> torch.Tensor:
        if id(w) not in packed:
            if opts["linear"] == "dnn-packed":
                packed[id(w)] = torch.ops.mkldnn._reorder_linear_weight(w, batch_tokens)
            else:
                packed[id(w)] = torch.ops.mkl._mkl_reorder_linear_weight(w, batch_tokens)
        return packed[id(w)]

    def lin(x, layer, gelu=False, residual=None):
        kind = opts["linear"]
        if kind in ("dnn", "dnn-packed"):
            w = layer.weight if kind == "dnn" else pack(layer.weight)
            if residual is not None:
                return lp.binary(x, residual, w, layer.bias, "add")
            return lp(x, w, layer.bias, "gelu" if gelu else "none", [], "none" if gelu else "")
        if kind == "mkl-packed":
            shape = x.shape
            y = torch.ops.mkl._mkl_linear(
                x.reshape(-1, shape[-1]), pack(layer.weight), layer.weight, layer.bias, batch_tokens
            ).view(*shape[:-1], -1)
        else:
            y = F.linear(x, layer.weight, layer.bias)
        y = F.gelu(y) if gelu else y
        return y if residual is None else residual + y

    def block_forward(self, x, head_mask=None, need_weights=False, cls_only=False):
        # the variants are timed on full sequences (ViTMSNModel); cls_only is only sliced, for correctness
        B, N, D = x.shape
        chunk = opts.get("chunk")
        if chunk and B * N > chunk:
            per = max(1, chunk // N)  # whole images per chunk
            out = torch.cat([one_block(self, xc) for xc in x.split(per)])
        else:
            out = one_block(self, x)
        return (out[:, :1] if cls_only else out), None

    def one_block(self, x):
        a = self.attn
        B, N, D = x.shape
        qkv = lin(self.norm1(x), a.qkv).view(B, N, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, hd)
        if opts["attn"] == "math":
            o = ((q * a.scale) @ k.transpose(-2, -1)).softmax(-1) @ v
        else:
            o = F.scaled_dot_product_attention(q, k, v)
        o = o.transpose(1, 2).reshape(B, N, D)
        x = lin(o, a.proj, residual=x) if opts["add"] else x + lin(o, a.proj)
        h = self.norm2(x)
        if opts["gelu"]:
            h = lin(h, self.mlp.fc1, gelu=True)
        else:
            h = F.gelu(lin(h, self.mlp.fc1))
        return lin(h, self.mlp.fc2, residual=x) if opts["add"] else x + lin(h, self.mlp.fc2)

    def patch_forward(self, x):
        # vitmsn's patches (B, P, C*ph*pw) @ W^T through oneDNN -> (B, P, D)
        w = self.proj.weight.reshape(self.proj.weight.shape[0], -1)
        return lp(self.patchify(x), w, self.proj.bias, "none", [], "")

    def conv_patch_forward(self, x):
        # the strided convolution the weights come from (vitmsn's patch embedding before 2026-12-02)
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, P, D)

    return block_forward, (patch_forward if opts["patch"] == "matmul" else conv_patch_forward)


def run_case(model_name: str, batch: int, args, variants: dict) -> dict:
    import torch

    from bench.inference import build_models
    from vitmsn.models import layers

    models, hp = build_models(model_name, QUICK if args.quick else {}, ("vitmsn",))
    model = models["vitmsn"]
    N = 1 + (hp["image_size"] // hp["patch_size"]) ** 2
    x = torch.randn(batch, 3, hp["image_size"], hp["image_size"], generator=torch.Generator().manual_seed(0))
    shipped_block, shipped_patch = layers.Block.forward, layers.PatchEmbed.forward

    def make(opts):
        if opts == "shipped":
            return lambda: model(x)
        if opts is None:

            def ref():
                with layers.fast_cpu_inference(False):
                    return model(x)

            return ref
        block_fwd, patch_fwd = variant_forwards(opts, batch * N)

        def run():
            layers.Block.forward = block_fwd
            layers.PatchEmbed.forward = patch_fwd
            try:
                return model(x)
            finally:
                layers.Block.forward, layers.PatchEmbed.forward = shipped_block, shipped_patch

        return run

    cases = {name: make(opts) for name, (_, opts) in variants.items()}
    repeats = args.repeats or (2 if args.quick else 5)
    with torch.inference_mode():
        ref = cases["reference"]().last_hidden_state
        diffs = {k: (fn().last_hidden_state - ref).abs().max().item() for k, fn in cases.items()}
        times = time_interleaved(cases, repeats=repeats, warmup=1)
    flops = vit_flops(**hp)["total"] * batch
    base = summarize(times["reference"])["median_s"]
    rows = []
    print(f"\n{model_name} batch {batch} ({repeats} interleaved repeats, median)")
    for name, ts in times.items():
        s = summarize(ts)
        rows.append(
            {
                "variant": name,
                "what": variants[name][0],
                **s,
                "images_per_s": batch / s["median_s"],
                "gflops": flops / s["median_s"] / 1e9,
                "speedup_vs_reference": base / s["median_s"],
                "max_abs_diff_vs_reference": diffs[name],
            }
        )
        print(
            f"  {name:24s} {batch / s['median_s']:8.2f} img/s  {flops / s['median_s'] / 1e9:6.1f} GFLOP/s  "
            f"x{base / s['median_s']:.3f}  max|diff| {diffs[name]:.1e}"
        )
    return {"model": model_name, "batch": batch, "repeats": repeats, "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--cases", default=None, help=f"model:batch,... (default {CASES})")
    p.add_argument("--variants", default=None, help="comma-separated subset of " + ", ".join(VARIANTS))
    args = p.parse_args(argv)
    threads = setup_torch(args.threads)
    machine = machine_info()
    spec = args.cases or ("vit_small_patch16_224:2" if args.quick else CASES)
    wanted = args.variants.split(",") if args.variants else list(VARIANTS)
    variants = {k: VARIANTS[k] for k in dict.fromkeys(["reference", *wanted])}
    results = [run_case(m, int(b), args, variants) for m, b in (c.split(":") for c in spec.split(","))]
    write_result(
        NAME,
        args,
        machine=machine,
        config={
            "cases": spec,
            "threads": threads,
            "variants": {k: v[0] for k, v in variants.items()},
            "models": MODELS,
        },
        results={"cases": results},
    )
    return {"cases": results}


if __name__ == "__main__":
    main()
