"""Experiment (issue 8): which restoration objective learns on the tiny base, and what a gated pixel skip adds.

Trains a UNet LoRA on the cached latents of a `daclip-lora demo` output folder (its data and controller LoRA) with
the LQ latent as x_t (multi-step, t < --tmax, x0-space loss) or one-step x0 regression at t=--onestep, then
reports held-out PSNR of D(z) + g * (LQ - D(z_LQ)) for g in {0, 0.5, 1} per degradation ("best-g": the best
fixed g per degradation, an upper bound for a gate predicted from DA-CLIP's degradation embedding).

    python bench/restoration_probe.py --demo runs/demo --targets convt --rank 16 --steps 1200 --onestep 200
"""
import torch, numpy as np, time, argparse
from pathlib import Path
import torch.nn.functional as F
from daclip_lora.backbone import SDBackbone
from daclip_lora.tiny_bases import embedded_sd_base
from daclip_lora.data.images import read_image
from daclip_lora.conditioning import RestorationConfig, RestorationUNet, add_unet_lora
from daclip_lora.factory import load_daclip
from daclip_lora.data.datasets import clip_batch
from daclip_lora.pipeline import make_scheduler
ap = argparse.ArgumentParser()
ap.add_argument('--demo', default='runs/demo')
ap.add_argument('--targets', default='attn')
ap.add_argument('--steps', type=int, default=600)
ap.add_argument('--lr', type=float, default=1e-3)
ap.add_argument('--rank', type=int, default=8)
ap.add_argument('--tmax', type=int, default=400)
ap.add_argument('--loss', default='x0')
ap.add_argument('--batch', type=int, default=8)
ap.add_argument('--nodeg', action='store_true')
ap.add_argument('--onestep', type=int, default=0)
a = ap.parse_args()
torch.set_num_threads(2); torch.manual_seed(0)
bb = SDBackbone.load(embedded_sd_base())
d3 = Path(a.demo)
daclip = load_daclip('daclip_tiny', str(d3/'models/daclip_tiny_base.safetensors'), str(d3/'runs/experiments/demo_controller/models/controller_lora')).eval()
def load(split):
    root = d3/'data'/split; G=[];L=[];D=[]
    for deg in sorted(p.name for p in root.iterdir()):
        for p in sorted((root/deg/'GT').glob('*.png')):
            G.append(torch.from_numpy(read_image(p)).permute(2,0,1).float()); L.append(torch.from_numpy(read_image(root/deg/'LQ'/p.name)).permute(2,0,1).float()); D.append(deg)
    G=torch.stack(G); L=torch.stack(L)
    with torch.no_grad():
        ie, de = daclip.encode_image(clip_batch(L), control=True)
    return G, L, D, bb.encode_latents(G), bb.encode_latents(L), ie, de
G,L,D,zg,zl,ie,de = load('train')
vG,vL,vD,vzg,vzl,vie,vde = load('val')
print('train', G.shape, 'val', vG.shape, flush=True)
targets = {'attn': ["to_q","to_k","to_v","to_out.0"],
           'conv': ["to_q","to_k","to_v","to_out.0","conv1","conv2","proj_in","proj_out","ff.net.0.proj","ff.net.2"],
           'convt': ["to_q","to_k","to_v","to_out.0","conv1","conv2","proj_in","proj_out","ff.net.0.proj","ff.net.2","time_emb_proj","conv_out","conv"]}[a.targets]
cfg = RestorationConfig(base='x', daclip_model='daclip_tiny', embed_dim=int(ie.shape[1]), cross_attention_dim=32, num_tokens=2,
    image_context=not a.nodeg, degra_context=not a.nodeg, lq_latent=True, latent_channels=4)
model = RestorationUNet(bb.unet, cfg)
add_unet_lora(model.unet, {'rank': a.rank, 'alpha': a.rank, 'targets': targets})
params = [p for p in model.parameters() if p.requires_grad]
print('trainable', sum(p.numel() for p in params), flush=True)
opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0)
sched = bb.scheduler
ac = sched.alphas_cumprod
with torch.no_grad():
    text = bb.encode_prompt([''], cfg.context_slots)
t0=time.time()
n = len(G)
for step in range(a.steps):
    idx = torch.randint(0, n, (a.batch,))
    z0, zq = zg[idx], zl[idx]
    # flips
    if torch.rand(1) < 0.5: z0, zq = z0.flip(-1), zq.flip(-1)
    t = torch.randint(0, a.tmax, (a.batch,)) if not a.onestep else torch.full((a.batch,), a.onestep)
    eps = torch.randn_like(z0)
    al = ac[t].view(-1,1,1,1)
    xt = al.sqrt()*zq + (1-al).sqrt()*eps if not a.onestep else al.sqrt()*zq
    lr = a.lr * min(1, (step+1)/20) * 0.5*(1+np.cos(np.pi*step/a.steps))
    for g in opt.param_groups: g['lr']=lr
    pred = model(xt, t, text.expand(a.batch,-1,-1), ie[idx], de[idx], zq)
    x0 = (xt - (1-al).sqrt()*pred)/al.sqrt()
    if a.loss == 'x0':
        loss = F.mse_loss(x0, z0)
    else:
        target = (xt - al.sqrt()*z0)/(1-al).sqrt()
        loss = ((pred-target)**2).mean((1,2,3)).mul(torch.clamp(al/(1-al),max=1).view(-1)*0+torch.clamp((1-al)/al,max=1).view(-1)).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 100 == 0 or step == a.steps-1: print(step, round(loss.item(),4), round(time.time()-t0,1), flush=True)
model.eval()
def psnr(a,b): return float(10*torch.log10(1/((a-b)**2).mean()))
@torch.no_grad()
def sample(zq, ie_, de_, strength, steps):
    s = make_scheduler('ddim', sched); s.set_timesteps(steps)
    ts = s.timesteps
    start = steps - max(1, int(round(steps*strength))); ts = ts[start:]
    noise = torch.randn(zq.shape, generator=torch.Generator().manual_seed(0))
    x = s.add_noise(zq, noise, ts[:1].repeat(len(zq)))
    for t in ts:
        pred = model(x, t.expand(len(zq)), text.expand(len(zq),-1,-1), ie_, de_, zq)
        x = s.step(pred, t, x).prev_sample
    return x
dl = bb.decode_latents(vzl)
for strength, steps in [(0.4, 20), (0.2, 20)]:
    if a.onestep:
        if steps != 20: continue
        t = torch.full((len(vzl),), a.onestep); al = ac[t].view(-1,1,1,1); xt = al.sqrt()*vzl
        with torch.no_grad(): pred = model(xt, t, text.expand(len(vzl),-1,-1), vie, vde, vzl)
        z = (xt - (1-al).sqrt()*pred)/al.sqrt()
    else:
        z = sample(vzl, vie, vde, strength, steps)
    dz = bb.decode_latents(z)
    rows = {}
    for deg in sorted(set(vD)):
        m = torch.tensor([d==deg for d in vD])
        r = {'lq': np.mean([psnr(x,y) for x,y in zip(vL[m],vG[m])])}
        for g in (0.0, 0.5, 1.0):
            o=(dz[m]+g*(vL[m]-dl[m])).clamp(0,1); r[f'g{g}']=np.mean([psnr(x,y) for x,y in zip(o,vG[m])])
        rows[deg]=r
    print(f'strength {strength} steps {steps}')
    for d,r in rows.items(): print(f'  {d:16s}', ' '.join(f'{k}={v:6.2f}' for k,v in r.items()))
    best = [max(r['g0.0'], r['g0.5'], r['g1.0']) for r in rows.values()]
    print('  mean            ', ' '.join(f'{k}={np.mean([r[k] for r in rows.values()]):6.2f}' for k in r), 'best-g', round(np.mean(best),2), 'improved', sum(b>r['lq'] for b,r in zip(best, rows.values())), flush=True)
