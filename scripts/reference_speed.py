"""Times the PyTorch original (quartic-transformer 0.0.18 with einx 0.3.0) on the speed table's
workloads, one line per workload: name, median seconds, peak RSS in MiB.

    python3 scripts/reference_speed.py WORKLOAD [REPEATS] [--device cuda]
    (readme-forward, readme-train, small-train, readme-forward-4s, readme-train-4s: the
    original's default of four residual streams). On a GPU the peak is the GPU memory PyTorch
    allocated (torch.cuda.max_memory_allocated), in MiB.

Run it with the interpreter of a virtual environment that has the original installed:
    python3 -m venv ../ref-venv && ../ref-venv/bin/pip install quartic-transformer==0.0.18 einx==0.3.0
"""
import resource
import statistics
import sys
import time

import torch
from quartic_transformer import QuarticTransformer

torch.manual_seed(0)


def readme_model(streams=1):
    # the original's README model, diagonal attention off (it is broken); one residual stream,
    # or its default of four (`*-4s` workloads)
    return QuarticTransformer(num_tokens=256, dim=512, depth=2, dim_edges=32,
                              num_residual_streams=streams, edges_diagonal_attn=False)


def small_model():
    return QuarticTransformer(num_tokens=256, dim=64, depth=2, dim_edges=16, heads=4, dim_head=16,
                              linear_heads=4, linear_dim_head=8, num_residual_streams=1,
                              edges_diagonal_attn=False, max_seq_len=128)


DEVICE = "cpu"


def tokens(b, n):
    return ((torch.arange(b * n).reshape(b, n) * 37 + 11) % 256).to(DEVICE)


def synchronize():
    if DEVICE != "cpu":
        torch.cuda.synchronize()


def train_step(model, opt, b, n):
    x = tokens(b, n)
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), ((x + 1) % 256).reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    synchronize()


def main():
    global DEVICE
    args = sys.argv[1:]
    if "--device" in args:
        i = args.index("--device")
        DEVICE = args[i + 1]
        del args[i:i + 2]
    which = args[0] if args else "readme-forward"
    # optional: the number of timed repeats (defaults below)
    repeats = int(args[1]) if len(args) > 1 else None
    times = []
    streams = 4 if which.endswith("-4s") else 1
    if which in ("readme-forward", "readme-forward-4s"):
        model = readme_model(streams).to(DEVICE).eval()
        with torch.no_grad():
            model(tokens(1, 128))
            for _ in range(repeats or 3):
                t = time.perf_counter()
                model(tokens(1, 128)).cpu()
                times.append(time.perf_counter() - t)
    elif which in ("readme-train", "readme-train-4s", "small-train"):
        model = (small_model() if which == "small-train" else readme_model(streams)).to(DEVICE)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        b, n, reps = (8, 32, 5) if which == "small-train" else (1, 128, 3)
        train_step(model, opt, b, n)
        for _ in range(repeats or reps):
            t = time.perf_counter()
            train_step(model, opt, b, n)
            times.append(time.perf_counter() - t)
    else:
        sys.exit(f"unknown workload {which}")
    if DEVICE == "cpu":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    else:
        peak = torch.cuda.max_memory_allocated() / 2**20
    print(f"{which}\t{statistics.median(times):.4f}\t{peak:.0f}")


if __name__ == "__main__":
    main()
