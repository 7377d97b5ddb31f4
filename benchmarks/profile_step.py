"""Where a fast-path training step spends its GPU time: top kernels by CUDA time (torch.profiler).

    python benchmarks/profile_step.py spikingformer_4_384 256 [--regional]
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import spikingformer
from spikingformer.fast import FastPath

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("model")
p.add_argument("batch", type=int)
p.add_argument("--regional", action="store_true", help="compile region by region (faster compile)")
p.add_argument("--steps", type=int, default=5)
p.add_argument("--top", type=int, default=25)
args = p.parse_args()

path = FastPath(regional=args.regional)
model = spikingformer.create_model(args.model).cuda()
c, h, w = model.default_input_size
x = path.to_input(torch.randn(args.batch, c, h, w, device="cuda"))
y = torch.randint(0, model.num_classes, (args.batch,), device="cuda")
runner = path.prepare(model)
opt = path.adamw(model.parameters(), lr=1e-4)


def step():
    with path.autocast("cuda"):
        loss = torch.nn.functional.cross_entropy(runner(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(3):
    step()
torch.cuda.synchronize()
print("compiled; profiling", flush=True)
with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=60))
