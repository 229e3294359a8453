"""diffusers DPMSolverMultistepScheduler reference values for src/diffusion/sd/scheduler.rs's
dpm_solver_matches_diffusers (printed with diffusers 0.42.1 in a venv with torch; pip install diffusers)."""
import torch, json, diffusers
from diffusers import DPMSolverMultistepScheduler
print("diffusers", diffusers.__version__)
base = {"_class_name":"DDIMScheduler","beta_end":0.012,"beta_schedule":"scaled_linear","beta_start":0.00085,
        "clip_sample":False,"num_train_timesteps":1000,"set_alpha_to_one":False,"skip_prk_steps":True,
        "steps_offset":1,"trained_betas":None}
for name, extra in [("eps-default", {}), ("v-leading", {"prediction_type":"v_prediction","timestep_spacing":"leading"}),
                    ("eps-karras", {"use_karras_sigmas": True})]:
    cfg = dict(base, **extra)
    s = DPMSolverMultistepScheduler.from_config(cfg)
    for n in [4, 20]:
        s.set_timesteps(n)
        print(name, n, "timesteps", s.timesteps.tolist())
    s.set_timesteps(4)
    x = torch.tensor([0.3, -0.7, 1.2], dtype=torch.float32)
    outs = [torch.tensor([0.5, 1.0, -0.2]), torch.tensor([0.1, -0.4, 0.3]), torch.tensor([-0.2, 0.6, 0.05]), torch.tensor([0.4, 0.2, -0.3])]
    for i, t in enumerate(s.timesteps):
        x = s.step(outs[i], t, x).prev_sample
        print(name, "step", i, int(t), [round(v, 7) for v in x.tolist()])
