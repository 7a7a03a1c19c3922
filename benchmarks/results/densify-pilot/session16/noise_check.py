"""Offline check (docs/densification.md, session 16): usage DATA/colmap_bird CHECKPOINT.pt... MCMC's position noise at a checkpoint: size relative to each Gaussian's scale, and the gate."""
import sys, torch
from trsplat.data.scene import load_scene
from trsplat.optim.schedules import exponential_decay
from trsplat.strategy.adc import rotation_matrices

scene = load_scene(sys.argv[1], downscale=4, background="black", workers=1)
print("extent", scene.extent)
for path in sys.argv[2:]:
    ck = torch.load(path, weights_only=False, map_location="cpu")
    o = ck["config"]["optim"]; it = ck["iteration"]
    lr = exponential_decay(it, start=o["lr_means"] * scene.extent, end=o["lr_means_final"] * scene.extent,
                           max_steps=o["lr_means_max_steps"] or ck["config"]["iters"])
    p = ck["params"]; op = torch.sigmoid(p["opacity_logits"]); s = torch.exp(p["log_scales"])
    gate = torch.sigmoid(-100 * (op - 0.005))
    # E|Σε| ~ sqrt(sum s_i^4); relative to the largest scale
    rel = lr * 5e5 * gate * torch.sqrt((s ** 4).sum(1)) / s.max(1).values
    print(f"{path.split('/')[-3]} it {it} lr {lr:.3g} lr*noise_lr {lr*5e5:.3g}; gate median {gate.median():.3g},"
          f" share gate>0.1 {(gate>0.1).float().mean():.3f}; noise/scale median {rel.median():.3g}, q90 {rel.quantile(0.9):.3g}")
