"""Run under transformers 4.x (a separate install on PYTHONPATH): make reference models, or load ours.

    python transformers4_reference.py make OUT_DIR   # tiny models saved by 4.x + their outputs
    python transformers4_reference.py load DIR...    # load vitmsn-saved directories, report keys and outputs
"""

import json
import sys
from pathlib import Path

import torch
import transformers

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
            patch_size=8, num_channels=3)
CLASSES = {"ViTMSNModel": "ViTMSNConfig", "ViTMSNForImageClassification": "ViTMSNConfig",
           "ViTModel": "ViTConfig", "ViTForImageClassification": "ViTConfig",
           "ViTForMaskedImageModeling": "ViTConfig"}


def outputs(model, x, **kw):
    out = model(x, output_hidden_states=True, output_attentions=True, **kw)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def make(out_dir: Path) -> None:
    assert transformers.__version__.startswith("4."), transformers.__version__
    torch.manual_seed(0)
    x, x48 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 48, 40)
    refs = {"x": x, "x48": x48, "version": transformers.__version__}
    for cls_name, cfg_name in CLASSES.items():
        extra = {"encoder_stride": 8} if "Masked" in cls_name else {}
        cfg = getattr(transformers, cfg_name)(**TINY, **extra, attn_implementation="eager")
        model = getattr(transformers, cls_name)(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            r = {"plain": outputs(model, x),
                 "head_mask_h": outputs(model, x, head_mask=torch.tensor([1.0, 0.0, 1.0, 0.5])),
                 "head_mask_lh": outputs(model, x, head_mask=torch.tensor([[1.0, 1, 0, 1], [0, 1, 1, 0.25]])),
                 "interp": outputs(model, x48, interpolate_pos_encoding=True) if "Masked" not in cls_name else None}
        refs[cls_name] = r
        model.save_pretrained(out_dir / f"{cls_name}_st", safe_serialization=True)
        model.save_pretrained(out_dir / f"{cls_name}_bin", safe_serialization=False)
    torch.save(refs, out_dir / "refs.pt")


def load(dirs: list[str]) -> None:
    x = torch.load(Path(dirs[0]).parent / "x.pt")
    report = {}
    for d in dirs:
        cls_name = json.loads((Path(d) / "config.json").read_text())["architectures"][0]
        model, info = getattr(transformers, cls_name).from_pretrained(d, output_loading_info=True)
        with torch.no_grad():
            out = model.eval()(x)
        report[d] = {"info": {k: [str(i) for i in v] for k, v in info.items()}, "first": out[0]}
    torch.save(report, Path(dirs[0]).parent / "report.pt")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(Path(sys.argv[2]))
    else:
        load(sys.argv[2:])
