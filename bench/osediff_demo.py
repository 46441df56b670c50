"""OSEDiff's options on the embedded demo, side by side in one run: the one-step input (scaled at t = 50, the
demo's, or OSEDiff's raw LQ latent at t = 999) and the VAE-encoder LoRA, per degradation::

    python bench/osediff_demo.py            # four variants, seed 0, each a fresh demo under runs/variants/

Each variant is `bench/demo_variant.py NAME JSON` (the demo with those preset values changed) in its own process,
one after the other; prints one JSON line per variant, then a Markdown table of the UNet alone and with the
fusion head on both held-out splits, and the head's gain over the LQ per degradation on new crops.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

VAE_LORA = {"rank": 4, "alpha": 4}
VARIANTS = {
    "scaled input, t = 50 (the demo)": {},
    "raw input, t = 999": {"sd_objective": {"one_step_t": 999, "one_step_input": "raw"}},
    "scaled input, t = 50, VAE-encoder LoRA r4": {"sd_objective": {"vae_encoder_lora": VAE_LORA}},
    "raw input, t = 999, VAE-encoder LoRA r4, conv_in trained": {
        "sd_objective": {"one_step_t": 999, "one_step_input": "raw", "vae_encoder_lora": VAE_LORA,
                         "train_conv_in": True}},
}


def main() -> None:
    script = Path(__file__).with_name("demo_variant.py")
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    rows = []
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        out = subprocess.run([sys.executable, str(script), f"osediff_{i}", json.dumps(overrides)], env=env,
                             capture_output=True, text=True, check=True)
        rows.append((name, json.loads(out.stdout.strip().splitlines()[-1])))
        print(json.dumps(rows[-1][1]), flush=True)
    degs = list(rows[0][1]["gain_per_degradation"])
    print("| variant | new crops: UNet alone | with head | new photographs: UNet alone | with head | seconds | "
          + " | ".join(degs) + " |")
    print("|---" * (6 + len(degs)) + "|")
    for name, r in rows:
        n = r["new_photographs"]
        print(f"| {name} | {r['psnr_unet']:.2f} | {r['psnr_restored']:.2f} | {n['psnr_unet']:.2f} | "
              f"{n['psnr_restored']:.2f} | {r['seconds']:.0f} | "
              + " | ".join(f"{r['gain_per_degradation'][d]:+.2f}" for d in degs) + " |")


if __name__ == "__main__":
    main()
