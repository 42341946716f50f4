"""The parts behind the pretraining-step and preprocessing changes, each timed against its alternative.

Interleaved A/B pairs (median ms per call), each the choice vitmsn made and what it replaced:

- ``adamw``: AdamW's fused kernel against the default (foreach) one, on the ``fashion-mnist`` preset's
  online network and prototypes;
- ``target``: the EMA target's forward (``fashion-mnist`` preset, batch 128) when its weights change before
  every call, with the weights packed for oneDNN again at every call against ``unpacked_weights()``, and
  its 2176 tokens in chunks of whole images (as before the activation-size rule of ``Block.forward``)
  against whole;
- ``patch``: the patch embedding as reshape + matmul against the strided convolution, forward + backward
  (the weight gradient), for the preset's 28 px images with 7 x 7 patches (batch 128) and ViT-S/16's 224 px
  (batch 8) and 96 px (batch 80) views;
- ``train linear``: a linear layer in training, forward + backward, as ``_TrainLinear`` (oneDNN's forward and
  input gradient, MKL's weight gradient) against ``F.linear``, on the preset's fc1 (128 -> 512, below
  ``TRAIN_MIN_FEATURES``: vitmsn runs ``F.linear`` there) and ViT-S/16's fc1, fc2 and qkv on its anchors' tokens;
- ``attention``: SDPA against the explicit ``softmax(q k^T) v``, forward + backward (with a dense upstream
  gradient, see bench/notes.md on why not a sum's) for training and forward alone for inference, with q, k
  and v views of one projection as the model makes them, on the preset's sequences (random anchors: 9
  tokens, focal anchors: 5, target: 17), ViT-S/16's views (focal: 37, random at 224 px: 167), a ViT-B/16
  random view without dropped patches (197) and inference at 224 px with ViT-S/16 (197) and ViT-B/32 (50);
- ``last block``: the encoder's last block, forward + backward, computed for the CLS token alone (the only
  output of it MSN reads) against every token, on the preset's random and focal anchors and on a ViT-S/16
  random anchor at 224 px (batch 8, 167 tokens kept);
- ``resize``: torch's uint8 antialiased bilinear resize of the 32 photographs of ``bench/preprocess.py`` to
  224 x 224, channels-last against channels-first input, and PIL's resize of the same images;
- ``views``: MSN's views (target, random and focal, as the preset makes them) of a batch of the preset's
  28 x 28 uint8 images, made by ``BatchViews`` for the whole batch at once against ``MSNViews`` one image
  at a time (as DataLoader workers make them, here in the main process).

    python bench/parts.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_info, parser, setup_torch, summarize, time_interleaved, write_result  # noqa: E402

NAME = "parts"


def _pairs(quick: bool) -> dict[str, dict[str, Any]]:
    """{part: {case: zero-argument callable}}; the first case of each part is what vitmsn ships."""
    import contextlib

    import numpy as np
    import PIL.Image
    import torch
    import torch.nn.functional as F

    from bench.preprocess import photographs
    from vitmsn.models import layers
    from vitmsn.msn.batch_views import BatchViews
    from vitmsn.msn.config import preset
    from vitmsn.msn.schedules import ema_update, param_groups
    from vitmsn.msn.train import build_state, build_views

    cfg = preset("fashion-mnist").with_overrides({"batch_size": 16 if quick else 128})
    torch.manual_seed(0)
    state = build_state(cfg, torch.device("cpu"))
    named = [*state.online.named_parameters(), ("prototypes", state.prototypes.weight)]
    for _, p in named:
        p.grad = torch.randn_like(p)
    optimizers = {kind: torch.optim.AdamW(param_groups(named, cfg.weight_decay), lr=1e-6, **{kind: True})
                  for kind in ("fused", "foreach")}
    pairs: dict[str, dict[str, Any]] = {"adamw": {f"AdamW {k}": opt.step for k, opt in optimizers.items()}}

    images = torch.randn(cfg.batch_size, 3, cfg.rand_size, cfg.rand_size)

    def target_forward(unpacked: bool, chunk_min_bytes: int = layers.CHUNK_MIN_BYTES):
        def run():
            ema_update(state.target, state.online, 0.99)  # the weights change before every forward
            previous, layers.CHUNK_MIN_BYTES = layers.CHUNK_MIN_BYTES, chunk_min_bytes
            try:
                with torch.no_grad(), (layers.unpacked_weights() if unpacked else contextlib.nullcontext()):
                    return state.target(images)
            finally:
                layers.CHUNK_MIN_BYTES = previous

        return run

    pairs["target"] = {"unpacked": target_forward(True), "packed at every call": target_forward(False),
                       "unpacked, in token chunks": target_forward(True, chunk_min_bytes=0)}

    shapes = [(cfg.batch_size, 3, 28, 28, 7, 128)]
    if not quick:
        shapes += [(8, 3, 224, 224, 16, 384), (80, 3, 96, 96, 16, 384)]
    for B, C, H, W, p, D in shapes:
        embed = layers.PatchEmbed(C, D, (p, p))
        x = torch.randn(B, C, H, W)

        grad = torch.randn(B, (H // p) * (W // p), D)  # a dense upstream gradient, as a loss gives

        def fwd_bwd(fn, embed=embed, x=x, grad=grad):
            def run():
                fn(embed, x).backward(grad)

            return run

        pairs[f"patch {B}x{H}px/{p}"] = {
            "reshape + matmul": fwd_bwd(lambda m, x: m(x)),
            "convolution": fwd_bwd(lambda m, x: m.proj(x).flatten(2).transpose(1, 2)),
        }

    # linear layers in training, forward + backward (input, weight and bias gradients): (tokens, in, out);
    # the preset's fc1 on its random anchors, ViT-S/16's fc1 and fc2 on the focal anchors (80 x 37 tokens)
    # and its qkv on the random anchors (8 x 167)
    linears = [("fc1", cfg.batch_size * 9, cfg.hidden_size, cfg.intermediate_size)]
    if not quick:
        linears += [("ViT-S fc1", 2960, 384, 1536), ("ViT-S fc2", 2960, 1536, 384), ("ViT-S qkv", 1336, 384, 1152)]
    for name, tokens, d_in, d_out in linears:
        layer = torch.nn.Linear(d_in, d_out)
        x = torch.randn(tokens, d_in, requires_grad=True)
        grad = torch.randn(tokens, d_out)

        def train_linear(fn, layer=layer, x=x, grad=grad):
            def run():
                fn(x, layer.weight, layer.bias).backward(grad)

            return run

        cases = {"oneDNN forward + input gradient": train_linear(layers._TrainLinear.apply),
                 "F.linear": train_linear(F.linear)}
        if min(d_in, d_out) < layers.TRAIN_MIN_FEATURES:  # vitmsn ships F.linear there: first
            cases = dict(reversed(cases.items()))
        pairs[f"train linear {name} {tokens}x{d_in}->{d_out}"] = cases

    def explicit(q, k, v):
        return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v

    # (name, images, tokens, heads, head dim, training): q, k and v as the model makes them, views of one
    # (n, tokens, 3, heads, hd) projection; training is forward + backward into that projection
    heads, hd = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    sequences = [("random", cfg.batch_size, 9, heads, hd, True), ("focal", 2 * cfg.batch_size, 5, heads, hd, True),
                 ("target", cfg.batch_size, 17, heads, hd, False)]
    if not quick:  # ViT-S/16 (6 heads of 64) and ViT-B/16 (12): MSN's views, and inference at 224 px
        sequences += [("ViT-S focal", 80, 37, 6, 64, True), ("ViT-S random", 8, 167, 6, 64, True),
                      ("ViT-B random", 8, 197, 12, 64, True), ("ViT-S inference", 8, 197, 6, 64, False),
                      ("ViT-B/32 inference", 32, 50, 12, 64, False)]
    for name, n, tokens, h, d, training in sequences:
        qkv = torch.randn(n, tokens, 3, h, d, requires_grad=training)
        grad = torch.randn(n, h, tokens, d)  # dense, as a loss gives (a sum's gradient, one expanded scalar,
        # is a stride-0 tensor that the explicit path's backward matmuls run far slower on)

        def attn(fn, qkv=qkv, grad=grad, training=training):
            def run():
                with torch.set_grad_enabled(training):
                    out = fn(*qkv.permute(2, 0, 3, 1, 4).unbind(0))  # (n, h, tokens, d)
                    if training:
                        out.backward(grad)

            return run

        pairs[f"attention {name} {n}x{tokens}"] = {"SDPA": attn(F.scaled_dot_product_attention),
                                                     "explicit": attn(explicit)}

    # the last block, whose only output MSN reads is the CLS token's
    blocks = [(f"{name} {n}x{tokens}", state.online.encoder.blocks[-1], n, tokens)
              for name, n, tokens in (("random", cfg.batch_size, 9), ("focal", 2 * cfg.batch_size, 5))]
    if not quick:  # ViT-S/16 (D=384): a 224 px random view with 15 % of its 196 patches dropped, batch 8
        blocks.append(("ViT-S 8x167", layers.Block(384, 6, 1536), 8, 167))
    for name, block, n, tokens in blocks:
        x = torch.randn(n, tokens, block.norm1.normalized_shape[0], requires_grad=True)

        grad = torch.randn(n, x.shape[-1])  # for the CLS output, dense as a loss gives

        def last(cls_only: bool, block=block, x=x, grad=grad):
            def run():
                y = block(x, cls_only=cls_only)[0]  # (n, 1 or tokens, D)
                y[:, 0].backward(grad)

            return run

        pairs[f"last block {name}"] = {"CLS only": last(True), "every token": last(False)}

    photos = photographs(4 if quick else 32, max_side=128 if quick else None)
    arrays = [np.array(im) for im in photos]  # (H, W, 3) uint8

    def resize(channels_last: bool):
        def run():
            for a in arrays:
                t = torch.from_numpy(a).permute(2, 0, 1)[None]  # (1, 3, H, W), channels-last in memory
                if not channels_last:
                    t = t.contiguous()
                F.interpolate(t, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)

        return run

    pairs["resize"] = {
        "torch uint8, channels-last": resize(True),
        "torch uint8, channels-first": resize(False),
        "PIL": lambda: [im.resize((224, 224), resample=PIL.Image.Resampling.BILINEAR) for im in photos],
    }

    per_image = build_views(cfg)  # MSNViews, as the DataLoader path of the trainer builds it
    whole_batch = BatchViews(per_image.cfg)
    digits = torch.randint(0, 256, (cfg.batch_size, 1, 28, 28), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    pairs["views"] = {
        "BatchViews, whole batch": lambda: whole_batch(digits, generator),
        "MSNViews, image by image": lambda: [per_image(img) for img in digits],
    }
    return pairs


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    threads = setup_torch(args.threads)
    machine = machine_info()
    repeats = args.repeats or (2 if args.quick else 15)
    rows = []
    for part, cases in _pairs(args.quick).items():
        times = time_interleaved(cases, repeats=repeats, warmup=1 if args.quick else 3)
        print(f"\n{part} ({repeats} interleaved repeats, median)")
        for case, ts in times.items():
            s = summarize(ts)
            rows.append({"part": part, "case": case, **s})
            print(f"  {case:30s} {s['median_s'] * 1e3:9.2f} ms")
    write_result(NAME, args, machine=machine, config={"threads": threads, "repeats": repeats},
                 results={"rows": rows})
    return {"rows": rows}


if __name__ == "__main__":
    main()
