"""The embedded demo with preset values overridden: one-off experiments on the demo's recipe.

    python bench/demo_variant.py l1 '{"sd_objective": {"loss": {"one_step": 1.0, "l1": 1.0}}}'
    python bench/demo_variant.py steps400 '{"sd_steps": 400}'

Writes the demo under ``runs/variants/<name>`` and prints the summary's headline figures (both held-out splits,
stage seconds, per-degradation gain over the LQ) as one JSON line. Dict values merge into the preset's dict.
"""

import json
import sys
from pathlib import Path

import torch

from daclip_lora.apps import demo


def main() -> None:
    name, overrides = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(2)
    preset = demo.DEMO_PRESETS["full"]
    for key, value in overrides.items():
        preset[key] = {**preset[key], **value} if isinstance(value, dict) and isinstance(preset.get(key), dict) \
            else value
    s = demo.run_demo(Path("runs/variants") / name, preset="full", seed=0, overwrite=True)
    keys = ["psnr_lq", "psnr_restored", "psnr_unet", "psnr_unet_wrong_embedding", "degradations_improved",
            "unet_degradations_improved"]
    out = {k: s.get(k) for k in keys + ["seconds", "stage_seconds"]}
    out["new_photographs"] = {k: s.get("new_photographs", {}).get(k) for k in keys}
    out["gain_per_degradation"] = {d: round(v["psnr"] - v["lq_psnr"], 2)
                                   for d, v in s["restoration_per_degradation"].items()}
    print(json.dumps({"name": name, "overrides": overrides, **out}))


if __name__ == "__main__":
    main()
