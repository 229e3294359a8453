"""diffusers EulerAncestralDiscreteScheduler reference values for src/diffusion/sd/scheduler.rs's
euler_ancestral_matches_diffusers (printed with diffusers 0.42.1 in a venv with torch; pip install
diffusers). The step's noise is fixed (randn_tensor replaced) so that the values can be checked
without torch's generator."""
import torch, diffusers
import diffusers.schedulers.scheduling_euler_ancestral_discrete as ea
from diffusers import EulerAncestralDiscreteScheduler
print("diffusers", diffusers.__version__)
noises = [torch.tensor([0.2, -0.1, 0.4]), torch.tensor([-0.3, 0.5, 0.1]), torch.tensor([0.6, 0.0, -0.2]), torch.tensor([0.1, 0.1, 0.1])]
calls = []
def fixed(shape, **kw):
    calls.append(1)
    return noises[len(calls) - 1].clone()
ea.randn_tensor = fixed
base = {"_class_name":"DDIMScheduler","beta_end":0.012,"beta_schedule":"scaled_linear","beta_start":0.00085,
        "clip_sample":False,"num_train_timesteps":1000,"set_alpha_to_one":False,"skip_prk_steps":True,
        "steps_offset":1,"trained_betas":None}
for name, extra in [("eps-default", {}), ("v-leading", {"prediction_type":"v_prediction","timestep_spacing":"leading"}),
                    ("eps-trailing", {"timestep_spacing":"trailing"})]:
    calls.clear()
    s = EulerAncestralDiscreteScheduler.from_config(dict(base, **extra))
    s.set_timesteps(4)
    print(name, "timesteps", [round(v, 4) for v in s.timesteps.tolist()])
    print(name, "sigmas", [round(v, 6) for v in s.sigmas.tolist()])
    print(name, "init_noise_sigma", round(float(s.init_noise_sigma), 6))
    x = torch.tensor([0.3, -0.7, 1.2], dtype=torch.float32) * s.init_noise_sigma
    outs = [torch.tensor([0.5, 1.0, -0.2]), torch.tensor([0.1, -0.4, 0.3]), torch.tensor([-0.2, 0.6, 0.05]), torch.tensor([0.4, 0.2, -0.3])]
    for i, t in enumerate(s.timesteps):
        x = s.step(outs[i], t, x).prev_sample
        print(name, "step", i, [round(v, 6) for v in x.tolist()])
