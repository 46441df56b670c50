"""Experiment harness (issue 8) behind the one-step objective: one variant per run, a JSON line each.

Trains a UNet LoRA (+ DA-CLIP tokens, LQ latent) on the latents of a `daclip-lora demo` output folder (its
controller LoRA; --data for another dataset): one step at timestep --t from x_t = sqrt(abar_t) z_LQ,
parameterised as x0 (--param x0), as the LQ latent minus a DA-CLIP-scaled prediction (rezero) or as the LoRA's
prediction minus the base UNet's (resid, exactly the identity at step 0); loss on the latent (latent), per-image
log-MSE (logl) or pixels through the decoder (pixel). Decodes with a gated pixel skip
``D(z) + g * (LQ - D(z_LQ))`` for g = 0, 1 and a gate fitted from the degradation embedding, and prints held-out
PSNR per degradation. The sweeps in the README ran 6 at a time on one GPU:

    cat sweep.txt | xargs -P 6 -I{} sh -c 'python bench/restoration_probe.py --demo runs/demo --device cuda {}'
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from daclip_lora.restoration.backbone import SDBackbone
from daclip_lora.restoration.lora import add_unet_lora
from daclip_lora.restoration.model import RestorationConfig, RestorationUNet
from daclip_lora.data.datasets import clip_batch
from daclip_lora.data.images import read_image
from daclip_lora.clip.factory import load_daclip
from daclip_lora.tiny.locate import embedded_sd_base

TARGETS = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "conv": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj",
             "ff.net.2"],
    "convt": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj",
              "ff.net.2", "time_emb_proj", "conv_out", "conv"],
}

ap = argparse.ArgumentParser()
ap.add_argument("--demo", default="runs/demo")
ap.add_argument("--data", default=None, help="dataset folder (default: DEMO/data)")
ap.add_argument("--targets", default="convt", choices=list(TARGETS))
ap.add_argument("--steps", type=int, default=600)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--rank", type=int, default=8)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--t", type=int, default=200)
ap.add_argument("--loss", default="pixel", choices=["pixel", "latent", "logl"])
ap.add_argument("--param", default="x0", choices=["x0", "rezero", "resid"])
ap.add_argument("--gate", default="learned", choices=["none", "one", "learned"])
ap.add_argument("--cond", default="full", choices=["full", "nodeg", "noimg", "none"])
ap.add_argument("--device", default="cpu")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--tag", default="")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
dev = torch.device(a.device)
bb = SDBackbone.load(embedded_sd_base())
bb.to(dev)
demo = Path(a.demo)
daclip = load_daclip("daclip_tiny", json.loads((demo / "summary.json").read_text())["daclip_base"],
                     str(demo / "runs/experiments/demo_controller/models/controller_lora")).eval().to(dev)


def load(split):
    root = Path(a.data or demo / "data") / split
    G, L, D = [], [], []
    for deg in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for p in sorted((root / deg / "GT").glob("*.png")):
            G.append(torch.from_numpy(read_image(p)).permute(2, 0, 1).float())
            L.append(torch.from_numpy(read_image(root / deg / "LQ" / p.name)).permute(2, 0, 1).float())
            D.append(deg)
    G, L = torch.stack(G).to(dev), torch.stack(L).to(dev)
    with torch.no_grad():
        ie, de = daclip.encode_image(clip_batch(L), control=True)
        zg, zl = bb.encode_latents(G), bb.encode_latents(L)
        dl = bb.decode_latents(zl)
    return G, L, D, zg, zl, dl, ie, de


G, L, D, zg, zl, dl, ie, de = load("train")
vG, vL, vD, vzg, vzl, vdl, vie, vde = load("val")
cfg = RestorationConfig(base="x", daclip_model="daclip_tiny", embed_dim=int(ie.shape[1]), cross_attention_dim=32,
                        num_tokens=2, image_context=a.cond in ("full", "nodeg") and a.cond != "noimg",
                        degra_context=a.cond in ("full", "noimg"), lq_latent=True, latent_channels=4)
if a.cond == "nodeg":
    cfg.degra_context, cfg.image_context = False, True
model = RestorationUNet(bb.unet, cfg)
add_unet_lora(model.unet, {"rank": a.rank, "alpha": a.rank, "targets": TARGETS[a.targets]})
gate = torch.nn.Sequential(torch.nn.LayerNorm(de.shape[1]), torch.nn.Linear(de.shape[1], 1))
torch.nn.init.zeros_(gate[1].weight)
torch.nn.init.constant_(gate[1].bias, 4.0)
step_head = torch.nn.Sequential(torch.nn.LayerNorm(de.shape[1]), torch.nn.Linear(de.shape[1], 1))
torch.nn.init.zeros_(step_head[1].weight)
torch.nn.init.zeros_(step_head[1].bias)
model.to(dev)
gate.to(dev)
step_head.to(dev)
params = [p for p in model.parameters() if p.requires_grad] + (list(gate.parameters()) if a.gate == "learned" else [])
params += list(step_head.parameters()) if a.param == "rezero" else []
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0)
ac = bb.scheduler.alphas_cumprod.to(dev)
al = ac[a.t].float()
with torch.no_grad():
    text = bb.encode_prompt([""], cfg.context_slots).to(dev)
vae = bb.vae
sf = vae.config.scaling_factor


def g_of(deg_emb):
    if a.gate == "none":
        return torch.zeros(len(deg_emb), 1, 1, 1, device=dev)
    if a.gate == "one":
        return torch.ones(len(deg_emb), 1, 1, 1, device=dev)
    return torch.sigmoid(gate(deg_emb)).view(-1, 1, 1, 1)


def restore(zq, ie_, de_, lq, dlq):
    t = torch.full((len(zq),), a.t, device=dev)
    xt = al.sqrt() * zq
    pred = model(xt, t, text.expand(len(zq), -1, -1), ie_, de_, zq)
    if a.param == "x0":
        z = (xt - (1 - al).sqrt() * pred) / al.sqrt()
    elif a.param == "rezero":
        z = zq - step_head(de_).view(-1, 1, 1, 1) * pred
    else:
        with torch.no_grad():
            model.unet.disable_adapters()
            base = model(xt, t, text.expand(len(zq), -1, -1), ie_ * 0, de_ * 0, zq, keep_lq=torch.zeros(len(zq), device=dev))
            model.unet.enable_adapters()
        z = zq - ((1 - al) / al).sqrt() * (pred - base)
    return z, ((vae.decode(z / sf).sample + 1) / 2) + g_of(de_) * (lq - dlq)


t0 = time.time()
print("setup done", flush=True)
n = len(G)
gen = torch.Generator().manual_seed(0)
for step in range(a.steps):
    idx = torch.randint(0, n, (a.batch,), generator=gen).to(dev)
    flip = torch.rand(1, generator=gen).item() < 0.5
    f = (lambda x: x.flip(-1)) if flip else (lambda x: x)
    lr = a.lr * min(1, (step + 1) / 20) * 0.5 * (1 + np.cos(np.pi * step / a.steps))
    for grp in opt.param_groups:
        grp["lr"] = lr
    z, out = restore(f(zl[idx]), ie[idx], de[idx], f(L[idx]), f(dl[idx]))
    if a.loss == "pixel":
        loss = F.mse_loss(out, f(G[idx]))
    elif a.loss == "latent":
        loss = F.mse_loss(z, f(zg[idx]))
    else:  # mean PSNR-like: per-sample log MSE
        loss = torch.log((z - f(zg[idx])).pow(2).mean((1, 2, 3)) + 1e-4).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
train_s = time.time() - t0
model.eval()
if a.gate == "learned" and a.loss != "pixel":  # fit the gate afterwards on the training set's decodes (cheap)
    with torch.no_grad():
        dz = torch.cat([restore(zl[i:i + 64], ie[i:i + 64], de[i:i + 64], L[i:i + 64], dl[i:i + 64])[1]
                        - g_of(de[i:i + 64]) * (L[i:i + 64] - dl[i:i + 64]) for i in range(0, n, 64)])
    gopt = torch.optim.Adam(gate.parameters(), lr=1e-2)
    for _ in range(300):
        loss = F.mse_loss(dz + g_of(de) * (L - dl), G)
        gopt.zero_grad()
        loss.backward()
        gopt.step()
fit_s = time.time() - t0 - train_s


def psnr(x, y):
    return float(10 * torch.log10(1 / ((x - y) ** 2).mean()))


with torch.no_grad():
    _, out = restore(vzl, vie, vde, vL, vdl)
    gv = g_of(vde)
    dz = out - gv * (vL - vdl)
    outs = {"g0": dz.clamp(0, 1), "g1": (dz + vL - vdl).clamp(0, 1), "gate": out.clamp(0, 1)}
    gv = gv.view(-1)
rows = {}
for deg in sorted(set(vD)):
    m = torch.tensor([d == deg for d in vD], device=dev)
    rows[deg] = {"lq": np.mean([psnr(x, y) for x, y in zip(vL[m], vG[m])]),
                 **{k: np.mean([psnr(x, y) for x, y in zip(o[m], vG[m])]) for k, o in outs.items()},
                 "g": float(gv[m].mean())}
    print(f"  {deg:16s} " + " ".join(f"{k} {v:6.2f}" for k, v in rows[deg].items()))
res = {"tag": a.tag, "data": a.data, "n_train": n, "param": a.param, "t": a.t, "loss": a.loss, "gate": a.gate, "cond": a.cond, "targets": a.targets, "rank": a.rank,
       "steps": a.steps, "lr": a.lr, "batch": a.batch, "train_s": round(train_s, 1), "fit_s": round(fit_s, 1),
       "lq": round(float(np.mean([r["lq"] for r in rows.values()])), 2)}
for k in outs:
    res["out_" + k] = round(float(np.mean([r[k] for r in rows.values()])), 2)
    res["out_" + k + "_improved"] = int(sum(r[k] > r["lq"] for r in rows.values()))
res["per_gate"] = {k: round(float(r["gate"] - r["lq"]), 2) for k, r in rows.items()}
print("RESULT " + json.dumps(res), flush=True)
