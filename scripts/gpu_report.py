"""The GPU check's report (run by `scripts/gpu_check.sh run`): every check of a device against
the CPU, through the `quartic` binary, into one Markdown file. Standard library only.

    python3 scripts/gpu_report.py --quartic BIN --device cuda --out DIR [--speed BIN]
        [--original DIR]

With `--speed` (the `speed` example's binary), a section of timings and peak memory: ours, and
the PyTorch original's (scripts/reference_speed.py, with DIR's packages first on its path) when
it imports.

Agreement asked of every comparison: |device - cpu| <= 1e-4 + 1e-3 |cpu|, elementwise.
"""
import argparse
import array
import csv
import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

ATOL, RTOL = 1e-4, 1e-3
FIXTURES = "tests/fixtures/reference"


def read_safetensors(path):
    """name -> (dtype, shape, flat values) for the F32, F64 and I64 tensors of a file."""
    codes = {"F32": "f", "F64": "d", "I64": "q"}
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] not in codes:
            continue
        begin, end = t["data_offsets"]
        values = array.array(codes[t["dtype"]])
        values.frombytes(data[begin:end])
        if sys.byteorder != "little":
            values.byteswap()
        out[name] = (t["dtype"], t["shape"], list(values))
    return out


def worst(got, want):
    """The largest |got - want| / (ATOL + RTOL |want|): at most 1 passes. NaN never passes."""
    if len(got) != len(want):
        return float("inf")
    w = 0.0
    for a, b in zip(got, want):
        d = abs(a - b) / (ATOL + RTOL * abs(b))
        if d != d:
            return float("inf")
        w = max(w, d)
    return w


class Report:
    """The report's lines, written out after every section (a check cut short by the GPU
    machine's time limit still leaves what ran), and the time left of its budget."""

    def __init__(self, quartic, device, out, budget):
        self.quartic, self.device, self.out = quartic, device, out
        self.lines, self.failed = [], []
        self.deadline = time.perf_counter() + budget

    def add(self, text=""):
        self.lines.append(text)

    def left(self):
        return self.deadline - time.perf_counter()

    def write(self):
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "gpu-report.md"), "w") as f:
            f.write("\n".join(self.lines) + "\n")

    def run(self, args, timeout=300):
        """Runs the binary; a run past its timeout (or the budget's end) comes back as a failed
        process whose stderr says so, not as an exception that would end the report."""
        timeout = max(1.0, min(timeout, self.left()))
        start = time.perf_counter()
        try:
            p = subprocess.run([self.quartic] + args, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            p = subprocess.CompletedProcess(e.cmd, -1, out, f"stopped after {timeout:.0f} s")
        return p, time.perf_counter() - start

    def verdict(self, name, ok):
        if not ok:
            self.failed.append(name)
        return "ok" if ok else "**FAILED**"


def machine(r):
    r.add("## Machine")
    r.add()
    p, _ = r.run(["--version"])
    r.add(f"- binary: `{r.quartic}`, {p.stdout.strip()}")
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True)
        r.add(f"- GPU: {q.stdout.strip() or q.stderr.strip()}")
    r.add(f"- device checked: `{r.device}`, against the CPU; {os.cpu_count()} CPU cores")
    r.add()
    if shutil.which("ldd"):
        missing = [l.strip() for l in subprocess.run(["ldd", r.quartic], capture_output=True,
                                                     text=True).stdout.splitlines() if "not found" in l]
        if missing:
            r.add("Libraries not found: " + "; ".join(f"`{m}`" for m in missing))
            r.add()


def check_section(r, title, args, name, what):
    """A `quartic check` run against the CPU: its verdict and its table."""
    r.add(f"## {title}")
    r.add()
    p, secs = r.run(args + ["--device", r.device], timeout=90)
    r.add(f"`quartic {' '.join(args)} --device {r.device}` ({secs:.1f} s): "
          f"{r.verdict(name, p.returncode == 0)}. {what}")
    r.add()
    r.add("```")
    r.add((p.stdout + p.stderr).strip())
    r.add("```")
    r.add()


def rules(r):
    check_section(r, "Every built-in rule's model, forward and backward, against the CPU",
                  ["check", "8"], "rules",
                  "Batch 2 (one padded), causal and not, edge inputs and an edge head; tolerance "
                  "1e-4 of each tensor's largest value.")


def ops(r):
    check_section(r, "Every backend op, forward and backward, against the CPU",
                  ["check", "--ops"], "ops",
                  "Attention weights (softmax, Taylor), attention (plain, with a bias, and with a "
                  "bias over 100 queries and keys in softmax and Taylor), Taylor attention in both "
                  "forms, the four edge patterns, each plain, padded and causal; routing, norms, "
                  "feedforward, linear; the output and every input's gradient; tolerance 1e-4 of "
                  "each tensor's largest value. (On the CPU: the fused kernels against the "
                  "composite forms a GPU runs.)")


def logits_of(r, checkpoint, tokens, device):
    p, _ = r.run(["forward", "--checkpoint", checkpoint, "--tokens",
                  ",".join(map(str, tokens)), "--device", device])
    if p.returncode != 0:
        return None, p.stderr.strip()
    rows = json.loads(p.stdout)["logits"][0]
    return [x for row in rows for x in row], ""


def fixtures(r, tmp):
    r.add("## The parity fixtures through `import-reference` and `forward`")
    r.add()
    r.add("The first sequence of each fixture's batch, without its mask (the command line takes "
          "none): the device against the CPU, and against the original's output where the "
          "fixture has no mask. Worst |Δ| / (1e-4 + 1e-3·|x|), ≤ 1 passes.")
    r.add()
    r.add("| fixture | device vs CPU | device vs original | |")
    r.add("| --- | ---: | ---: | --- |")
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*.json"))):
        name = os.path.basename(path)[:-5]
        cls = json.load(open(path)).get("config", {}).get("cls")
        if cls not in ("QuarticTransformer", "MultiStreamTransformer"):
            continue  # import-reference takes whole models only
        ckpt = os.path.join(tmp, name + ".safetensors")
        p, _ = r.run(["import-reference", "--weights", path[:-5] + ".safetensors",
                      "--config", path, "--out", ckpt])
        if p.returncode != 0:
            r.add(f"| {name} | import failed: {why(p.stderr)} | | {r.verdict(name, False)} |")
            continue
        tensors = read_safetensors(path[:-5] + ".safetensors")
        _, shape, values = tensors["input.0"]
        n = shape[1]
        tokens = values[:n]
        got, err = logits_of(r, ckpt, tokens, r.device)
        cpu, cpu_err = logits_of(r, ckpt, tokens, "cpu")
        if got is None or cpu is None:
            r.add(f"| {name} | forward failed: {why(err or cpu_err)} | | {r.verdict(name, False)} |")
            continue
        vs_cpu = worst(got, cpu)
        masked = "input.1" in tensors
        vs_ref = None if masked else worst(got, tensors["output.main"][2][:len(got)])
        ok = vs_cpu <= 1 and (vs_ref is None or vs_ref <= 1)
        ref = "– (masked)" if vs_ref is None else f"{vs_ref:.3f}"
        r.add(f"| {name} | {vs_cpu:.3f} | {ref} | {r.verdict(name, ok)} |")
    r.add()


def losses(csv_path):
    with open(csv_path) as f:
        return [float(row["loss"]) for row in csv.DictReader(f) if row.get("loss")]


def default_run(r, tmp):
    r.add("## The README's default run, `quartic train`")
    r.add()
    out = os.path.join(tmp, "train-device")
    p, secs = r.run(["train", "--device", r.device, "--out", out, "--quiet"], timeout=150)
    tail = (p.stdout + p.stderr).strip().splitlines()
    held = next((l for l in tail if l.startswith("held-out")), "no held-out line")
    ok = p.returncode == 0 and "accuracy 100.0" in held
    r.add(f"On `{r.device}` to its end ({secs:.1f} s): {held}: {r.verdict('train', ok)} "
          "(the target is 100 %).")
    r.add()
    if p.returncode != 0:
        r.add("```")
        r.add("\n".join(tail[-10:]))
        r.add("```")
        r.add()


def first_losses(r, tmp):
    """The same 20 steps on both devices (the schedule depends on the number of steps)."""
    r.add("## The first 20 losses of `quartic train`, against the CPU")
    r.add()
    runs = []
    for k, device in enumerate((r.device, "cpu")):
        d = os.path.join(tmp, f"train20-{k}")
        p, secs = r.run(["train", "--device", device, "--steps", "20", "--out", d, "--quiet"],
                        timeout=90)
        runs.append((p, secs, d))
    (p_dev, s_dev, d_dev), (p_cpu, s_cpu, d_cpu) = runs
    if p_dev.returncode != 0 or p_cpu.returncode != 0:
        r.add(f"20 steps: failed ({why(p_dev.stderr if p_dev.returncode else p_cpu.stderr)}): "
              f"{r.verdict('losses', False)}")
        r.add()
        return
    a, b = losses(os.path.join(d_dev, "metrics.csv")), losses(os.path.join(d_cpu, "metrics.csv"))
    w = worst(a, b)
    r.add(f"`quartic train --steps 20` on both ({s_dev:.1f} s on `{r.device}`, {s_cpu:.1f} s on "
          f"the CPU, whole processes): the 20 losses differ by at most {w:.3f} of the tolerance: "
          f"{r.verdict('losses', w <= 1)}.")
    r.add()
    r.add("| step | " + " | ".join(str(k + 1) for k in range(len(a))) + " |")
    r.add("| --- |" + " ---: |" * len(a))
    r.add(f"| {r.device} | " + " | ".join(f"{x:.4f}" for x in a) + " |")
    r.add("| cpu | " + " | ".join(f"{x:.4f}" for x in b) + " |")
    r.add()


class GpuMemory:
    """The most GPU memory in use (nvidia-smi, every 50 ms) while a block runs, less what was in
    use before it: the process's context and allocations. None without nvidia-smi."""

    def __init__(self, device):
        self.on = device.startswith("cuda") and shutil.which("nvidia-smi") is not None
        self.index = device.split(":")[1] if ":" in device else "0"

    def used(self):
        p = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                            "-i", self.index], capture_output=True, text=True)
        try:
            return float(p.stdout.strip().splitlines()[0])
        except (ValueError, IndexError):
            return float("nan")

    def __enter__(self):
        self.peak, self.done = None, threading.Event()
        if self.on:
            self.base = self.used()
            self.peak = self.base
            self.thread = threading.Thread(target=self.poll, daemon=True)
            self.thread.start()
        return self

    def poll(self):
        while not self.done.wait(0.05):
            self.peak = max(self.peak, self.used())

    def __exit__(self, *exc):
        self.done.set()
        if self.on:
            self.thread.join()

    def mib(self):
        return None if self.peak is None else self.peak - self.base


SPEED_ROWS = ["small-train", "readme-forward", "readme-train", "quartic-32", "quartic-64",
              "quartic-128", "triangle-128", "edge_transformer-128"]
ORIGINAL_ROWS = {"small-train", "readme-forward", "readme-train"}


def fmt(x, spec):
    """`x` formatted by `spec`, or a dash for a figure that is missing."""
    return "–" if x is None else spec.format(x)


def why(stderr):
    """A failed run's reason in one line: the panic's place and message, or the last line."""
    lines = [l for l in stderr.strip().splitlines()
             if l and not l.startswith(("note:", "stack backtrace:"))]
    return " ".join(lines[-3:])[:300] or "failed"


def timed(r, cmd, env=None, timeout=60):
    """Runs one speed workload: (seconds, peak host MiB, peak GPU MiB or None, error or None)."""
    timeout = min(timeout, r.left())
    if timeout < 5:
        return None, None, None, "skipped: the check's time budget is spent"
    with GpuMemory(r.device) as mem:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return None, None, mem.mib(), f"over {timeout} s"
    if p.returncode != 0:
        return None, None, mem.mib(), why(p.stderr)
    # workload, seconds, peak host MiB[, GFLOP per repeat]
    fields = p.stdout.strip().split("\t")
    return float(fields[1]), float(fields[2]), mem.mib(), None


def speed(r, speed_bin, original):
    r.add("## Timings and peak memory")
    r.add()
    r.add("Each workload in its own process (`speed WORKLOAD --device`; the original through "
          "`scripts/reference_speed.py`): median seconds of the timed repeats after one untimed "
          "run, peak host memory, and peak GPU memory in use while it ran (nvidia-smi every "
          "50 ms, less what was in use before: our figure includes the CUDA context; the "
          "original's column is PyTorch's own peak allocation).")
    r.add()
    env = dict(os.environ)
    if original:
        env["PYTHONPATH"] = original + os.pathsep + env.get("PYTHONPATH", "")
    probe = subprocess.run([sys.executable, "-c", "import quartic_transformer"], env=env,
                           capture_output=True, text=True)
    have_original = probe.returncode == 0
    if not have_original:
        r.add(f"The original does not import here ({(probe.stderr.strip().splitlines() or ['?'])[-1]}): "
              "its columns are empty.")
        r.add()
    r.add("| workload | ours (s) | host MiB | GPU MiB | original (s) | original GPU MiB | original / ours |")
    r.add("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    notes = []
    for row in SPEED_ROWS:
        secs, host, gpu, err = timed(r, [speed_bin, row, "--device", r.device])
        o_secs = o_peak = None
        if have_original and row in ORIGINAL_ROWS:
            o_secs, o_peak, _, o_err = timed(r, [sys.executable, "scripts/reference_speed.py", row,
                                                 "--device", r.device], env=env)
            if o_err:
                notes.append(f"- the original's `{row}`: {o_err}")
        ratio = o_secs / secs if secs and o_secs else None
        ours = fmt(secs, "{:.4f}") if not err else f"failed: {err}"
        r.add(f"| {row} | {ours} | {fmt(host, '{:.0f}')} | {fmt(gpu, '{:.0f}')} | "
              f"{fmt(o_secs, '{:.4f}')} | {fmt(o_peak, '{:.0f}')} | {fmt(ratio, '{:.1f}×')} |")
        r.write()
    r.add()
    for note in notes:
        r.add(note)
    if notes:
        r.add()
    r.add("Targets (issue 17): README train step at least as fast as the original on the same GPU; "
          "`quartic-128` under 0.5 s and under 8 GB.")
    r.add()


def largest(r, speed_bin):
    r.add("## The largest `quartic` layer that runs")
    r.add()
    if r.device.startswith("cuda"):
        # the largest one-layer `quartic` that runs: doubling n until a run fails or takes 20 s.
        # With the memory-efficient attention, time (n⁴) rather than memory ends it: each
        # doubling costs 16×, so the last one is bounded by the timeout (the check stays
        # within its few minutes)
        largest, n = None, 128
        while n <= 2048:
            n *= 2
            # one timed run after the untimed one: each doubling must fit in the timeout
            secs, _, gpu, err = timed(r, [speed_bin, f"quartic-{n}", "1", "--device", r.device],
                                      timeout=45)
            if err or secs is None or secs > 20:
                r.add(f"`quartic-{n}`: {err or f'{secs:.1f} s'}; stopped there.")
                break
            largest = (n, secs, gpu)
        if largest:
            n, secs, gpu = largest
            r.add(f"Largest `quartic` layer run: n = {n}, {secs:.2f} s forward + backward, "
                  f"{fmt(gpu, '{:.0f}')} MiB of GPU memory.")
        r.add()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quartic", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    ap.add_argument("--speed", help="the speed example's binary: adds the timings section")
    ap.add_argument("--original", help="a folder with the original's packages, for its timings")
    ap.add_argument("--budget", type=float, default=300,
                    help="seconds for the whole check: a run is cut at the budget's end, and "
                         "what is left is reported as skipped")
    ap.add_argument("--skip", default=os.environ.get("GPU_CHECK_SKIP", ""),
                    help="sections to leave out, comma-separated (default: $GPU_CHECK_SKIP)")
    args = ap.parse_args()
    skip = {name for name in args.skip.split(",") if name}
    r = Report(os.path.abspath(args.quartic), args.device, args.out, args.budget)
    started = time.perf_counter()
    r.add(f"# GPU check: `{args.device}` against the CPU")
    r.add()
    with tempfile.TemporaryDirectory() as tmp:
        sections = [("machine", machine), ("ops", ops), ("rules", rules),
                    ("fixtures", lambda r: fixtures(r, tmp)),
                    ("losses", lambda r: first_losses(r, tmp))]
        speed_bin = args.speed and os.path.abspath(args.speed)
        if speed_bin:
            sections.append(("speed", lambda r: speed(r, speed_bin, args.original
                                                      and os.path.abspath(args.original))))
        sections.append(("train", lambda r: default_run(r, tmp)))
        if speed_bin:
            sections.append(("largest", lambda r: largest(r, speed_bin)))
        for name, section in sections:
            if name in skip:
                r.add(f"## {name}: left out this run")
                r.add()
                continue
            if r.left() < 5:
                r.add(f"## {name}: skipped, the check's {args.budget:.0f} s budget is spent")
                r.add()
                r.failed.append(name + " (skipped)")
                continue
            try:
                section(r)
            except Exception as e:  # one section's breakage must not lose the others' results
                r.add(f"**{name} broke**: `{type(e).__name__}: {e}`")
                r.add()
                r.failed.append(name)
            r.write()
            print(f"gpu_report: {name} done at {time.perf_counter() - started:.0f} s", file=sys.stderr,
                  flush=True)
    r.add("## Verdict")
    r.add()
    r.add(f"{len(r.failed)} check(s) failed" + (f": {', '.join(r.failed)}" if r.failed else "")
          + f"; {time.perf_counter() - started:.0f} s in all.")
    r.write()
    print("\n".join(r.lines))
    sys.exit(1 if r.failed else 0)


if __name__ == "__main__":
    main()
