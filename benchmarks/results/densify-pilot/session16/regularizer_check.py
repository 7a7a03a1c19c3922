"""Offline check (docs/densification.md, session 16): usage CHECKPOINT.pt. Where would MCMC's regulariser gradients alone put a tr step? (checkpoint analysis, no training)"""
import sys, math, torch
from trsplat.config import TrainConfig  # noqa
from trsplat.optim.hellinger import TrustRegionConfig, clip_step

path = sys.argv[1]
lam_o = lam_s = 0.01
ck = torch.load(path, weights_only=False, map_location="cpu")
cfg = ck["config"]; o = cfg["optim"]; it = ck["iteration"]; iters = cfg["iters"]
eps = o["eps_start"] * (o["eps_end"] / o["eps_start"]) ** (it / iters)
params = {k: v.detach() for k, v in ck["params"].items()}
N = len(params["means"])
names = [g["name"] for g in ck["optimizer"]["param_groups"]]
state = {names[i]: s for i, s in ck["optimizer"]["state"].items() if isinstance(i, int)}
clamp = tuple(float(x) for x in o["tr_mass_clamp"].split(","))
tc = TrustRegionConfig(bounds=o["tr_bounds"], split_budget=o["tr_split_budget"], opacity_eps_scale=o["tr_opacity_eps_scale"],
                       mass_clamp=clamp, quat_norm_cap=o["tr_quat_norm_cap"], rest_ratio=o["tr_rest_ratio"],
                       color_box=o["tr_color_box"], color_floor=o["tr_color_floor"], rest_radius_from_box=o["tr_rest_radius_from_box"],
                       mass_bounds=o["tr_mass_bounds"], opacity_box_mode=o["tr_opacity_box_mode"], scale_min_ratio=o["tr_scale_min_ratio"])
op = torch.sigmoid(params["opacity_logits"]); s = torch.exp(params["log_scales"])
greg = {"opacity_logits": lam_o * op * (1 - op) / N, "log_scales": lam_s * s / s.numel()}
print(f"{path}\n iteration {it}, N={N}, eps={eps:.3g}, opacity median {op.median():.4f}, >0.1: {(op>0.1).sum()}")
for name in ("opacity_logits", "log_scales"):
    st = state[name]; g, D = st["grad_ema"], st["curv_ema"]
    far = -torch.ones_like(params[name]) * 1e30  # downward
    rad = clip_step(params, {name: far}, eps, tc, backend="torch")[0][name].abs()
    reg_step = greg[name] / D.clamp_min(o["guard_floor"])
    sat = (reg_step >= rad) & (rad > 0)
    newton = (g.abs() / D.clamp_min(o["guard_floor"]))
    down = (g > 0)
    print(f" {name}: D̂ median {D.median():.3g} (zero: {(D==0).float().mean():.3f}); |ĝ| median {g.abs().median():.3g};"
          f" reg grad median {greg[name].median():.3g}; downward radius median {rad.median():.3g}")
    print(f"   reg gradient alone reaches the bound: {sat.float().mean():.3f};  reg/|ĝ| median {(greg[name]/g.abs().clamp_min(1e-30)).median():.3g};"
          f" ĝ>0 (step down): {down.float().mean():.3f}; Newton step on the bound: {(newton >= rad).float().mean():.3f}")
