"""The GPU measurements issue 18 asks for beside throughput, each printed as a small table.

Randomly initialised models of the published shapes (``bench/gpu_throughput.py``'s, and
Gemma-3-4b's), so nothing is downloaded. Parts (``--parts``):

- ``head-loss``: the one-pass head loss (``donors.train.loss``) against a plain fp32
  cross-entropy over bf16 logits at vocabulary 262,144 (Gemma 3), forward + backward: ms and
  peak memory, for 16 to 4,096 answer rows, and which of the two donors takes there.
- ``determinism``: training Llama-3.2-1B's shape with deterministic kernels on and off
  (``train.deterministic``): seconds for the same steps, their ratio (the cost the README
  states), and whether two runs of each give byte-identical adapters.
- ``memory-8b``: one training step of Llama-3.1-8B's shape in bf16, 8 x ~512 tokens: peak memory
  with donors' adapters (bf16, fused) against PEFT's default (adapters cast to fp32, its own
  layers) and a plain cross-entropy.
- ``gemma-4b``: a Gemma-3-4b vision-language checkpoint (random weights, the published config)
  written to disk and loaded through ``donors.models.load_model``: the class it becomes, whether
  any vision parameter reached the device, and the memory the weights take.
- ``token-budget``: scoring with ``native.token_budget`` on the 1B and 8B shapes at long prompts:
  the budget, the widest batch it allowed, and the peak memory over the weights as a share of
  what the budget assumed (``GPU_MEMORY_SHARE`` of the memory the weights leave).
- ``train-profile``: one ``train_lora`` call on Llama-3.2-1B's shape under the profiler: the
  share of the wall time the device's kernels are busy, kernels launched per step, and the
  operators that take the most device and host time.
- ``gpu-sharing``: 1, 2 and 4 processes training Llama-3.2-1B's shape on the one device at once:
  their tokens/s together, what ``ray.gpus_per_job`` below 1 buys for a host-bound small model.

    python3 bench/gpu_numerics.py --tokenizer DIR [--parts head-loss determinism ...]
    .venv/bin/python bench/gpu_numerics.py --tiny     # anywhere: small shapes, to check it runs
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_throughput import SHAPES, build, items, load_bench_tokenizer, n_tokens, peak_memory_gib, sync  # noqa: E402

from donors.config import LoraConfig, TrainConfig  # noqa: E402
from donors.evaluate import native  # noqa: E402
from donors.execute.work import CUBLAS_WORKSPACE, deterministic_training  # noqa: E402
from donors.models import load_model, pick_dtype  # noqa: E402
from donors.train.lora import peft_lora_config, train_lora  # noqa: E402
from donors.train.loss import chunk_rows_for, one_pass_cross_entropy, one_pass_pays  # noqa: E402

GEMMA_4B_TEXT = dict(
    hidden_size=2560,
    intermediate_size=10240,
    num_hidden_layers=34,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    vocab_size=262208,
    sliding_window=1024,
    query_pre_attn_scalar=256,
    rms_norm_eps=1e-6,
)
GEMMA_4B_VISION = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=896, patch_size=14
)


def clock(device: torch.device, run) -> float:
    sync(device)
    started = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - started


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def head_loss(args, device, dtype) -> None:
    vocab, width = (4096, 256) if args.tiny else (262144, 2560)
    head = torch.nn.Linear(width, vocab, bias=False, device=device, dtype=dtype).requires_grad_(False)  # frozen, as under LoRA
    print(f"\n## head loss, vocabulary {vocab:,} x {width} in {dtype} (chunk rows here: {chunk_rows_for(device, width):,})\n")
    print("| answer rows | one-pass ms | one-pass peak GiB | plain fp32 CE ms | plain peak GiB | donors takes |")
    print("|---:|---:|---:|---:|---:|---|")
    for rows in (16, 256, 4096):
        labels = torch.randint(vocab, (rows,), device=device)
        hidden = (torch.randn(rows, width, device=device, dtype=dtype)).requires_grad_()

        def one_pass():
            one_pass_cross_entropy(hidden, head.weight, labels).backward()

        def plain():
            F.cross_entropy(head(hidden).float(), labels, reduction="sum").backward()

        timings = {}
        for name, run in (("one_pass", one_pass), ("plain", plain)):
            run()  # warm-up
            reset_peak(device)
            timings[name] = (min(clock(device, run) for _ in range(5)) * 1e3, peak_memory_gib(device))
        (a, am), (b, bm) = timings["one_pass"], timings["plain"]
        taken = "one pass" if one_pass_pays(device, rows, vocab) else "plain"
        print(f"| {rows:,} | {a:.2f} | {am:.2f} | {b:.2f} | {bm:.2f} | {taken} |", flush=True)


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]


MODE = "DONORS_BENCH_DETERMINISTIC"
"""Set in the child process that times one mode of the determinism part: "1" on, "0" off."""


def small_training(args, device, dtype):
    """Llama-3.2-1B's shape, the published batch (8 x ~250 tokens) and ``--steps`` batches of items: what the
    determinism, train-profile and gpu-sharing parts train."""
    model = build("llama-3.2-1b", args.tiny, device, dtype)
    train = TrainConfig(epochs=1, batch_size=8, validation_fraction=0.0, max_length=512, warmup_ratio=0.0)
    return model, train, items(8 * args.steps, 40 if args.tiny else 200, seed=1)


def determinism(args, device, dtype, tokenizer) -> None:
    """Each mode in a process of its own, set up as a study's worker is (cuBLAS's workspace is fixed at its first use)."""
    if MODE in os.environ:
        determinism_run(args, device, dtype, tokenizer, os.environ[MODE] == "1")
        return
    print(f"\n## deterministic kernels, llama-3.2-1b shape, {args.steps} steps of 8 x ~250 tokens, each mode in its own process\n")
    print("| deterministic | seconds (best of 2) | adapters of two runs identical | recorded |")
    print("|---|---:|---|---|")
    seconds = {}
    for enabled in (True, False):
        env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
        env[MODE] = "1" if enabled else "0"
        if enabled:
            env["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE  # what prepare_worker sets for train.deterministic
        command = [sys.executable, __file__, "--parts", "determinism", "--steps", str(args.steps), "--dtype", args.dtype]
        command += (["--tiny"] if args.tiny else []) + (["--tokenizer", str(args.tokenizer)] if args.tokenizer else [])
        child = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        row = [line for line in child.stdout.splitlines() if line.startswith("|")]
        if child.returncode or not row:
            print(f"| {enabled} | failed: {(child.stderr.strip().splitlines() or ['?'])[-1]} | | |", flush=True)
            continue
        print(row[-1], flush=True)
        seconds[enabled] = float(row[-1].split("|")[2])
    if len(seconds) == 2:
        print(f"\ncost of deterministic kernels: {seconds[True] / seconds[False]:.2f}x the time of the default ones")


def determinism_run(args, device, dtype, tokenizer, enabled: bool) -> None:
    model, train, data = small_training(args, device, dtype)
    runs, digests, recorded = [], [], ""
    with tempfile.TemporaryDirectory() as out:
        with deterministic_training(enabled, device.type):
            train_lora(model, tokenizer, data[:8], lora=LoraConfig(), train=train, seed=0, output_dir=Path(out) / "warm")
        for attempt in range(2):
            folder = Path(out) / str(attempt)
            with deterministic_training(enabled, device.type) as outcome:
                runs.append(
                    clock(device, lambda: train_lora(model, tokenizer, data, lora=LoraConfig(), train=train, seed=0, output_dir=folder))
                )
            digests.append(_digest(folder))
            recorded = outcome["deterministic"]
    print(f"| {enabled} | {min(runs):.2f} | {digests[0] == digests[1]} | {recorded} |", flush=True)


def train_profile(args, device, dtype, tokenizer) -> None:
    """Where a training step's time goes: the device's busy share of the wall time, and the busiest operators."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    model, train, data = small_training(args, device, dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with tempfile.TemporaryDirectory() as out:
        train_lora(model, tokenizer, data[:8], lora=LoraConfig(), train=train, seed=0, output_dir=Path(out) / "warm")
        with profile(activities=activities) as profiled:
            seconds = clock(
                device, lambda: train_lora(model, tokenizer, data, lora=LoraConfig(), train=train, seed=0, output_dir=Path(out) / "p")
            )
    kernels = [event for event in profiled.events() if event.device_type == DeviceType.CUDA]
    busy = sum(event.time_range.elapsed_us() for event in kernels) / 1e6
    print(f"\n## where training time goes, llama-3.2-1b shape, {args.steps} steps of 8 x ~250 tokens, {dtype}\n")
    print(f"- wall {seconds:.2f} s for one train_lora call; device kernels busy {busy:.2f} s ({busy / seconds:.0%})")
    print(f"- kernels launched: {len(kernels):,} ({len(kernels) / args.steps:,.0f} a step)\n")
    sort = "self_device_time_total" if kernels else "self_cpu_time_total"
    print(profiled.key_averages().table(sort_by=sort, row_limit=14, max_name_column_width=60))
    print(profiled.key_averages().table(sort_by="cpu_time_total", row_limit=14, max_name_column_width=60), flush=True)


SHARE = "DONORS_BENCH_SHARE_START"
"""Set in the processes of the gpu-sharing part: the wall-clock time at which they all start training."""
SHARE_STARTUP_S = 30
"""Seconds the sharing processes are given to import, build their model and warm up before they start together."""


def gpu_sharing(args, device, dtype, tokenizer) -> None:
    """1, 2 and 4 processes training at once on one device: what ``ray.gpus_per_job`` below 1 buys."""
    if SHARE in os.environ:
        sharing_run(args, device, dtype, tokenizer)
        return
    print(f"\n## processes sharing one device, each training llama-3.2-1b's shape, {args.steps} steps of 8 x ~250 tokens\n")
    print("| processes | tokens/s, all together | tokens/s each | over one process |")
    print("|---:|---:|---:|---:|")
    alone = None
    for n in (1, 2, 4):
        command = [sys.executable, __file__, "--parts", "gpu-sharing", "--steps", str(args.steps), "--dtype", args.dtype]
        command += (["--tiny"] if args.tiny else []) + (["--tokenizer", str(args.tokenizer)] if args.tokenizer else [])
        env = {**os.environ, SHARE: str(time.time() + SHARE_STARTUP_S)}
        children = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
        outputs = [child.communicate() for child in children]
        rows = [line.split()[1:] for out, _ in outputs for line in out.splitlines() if line.startswith("share ")]
        if len(rows) != n or any(child.returncode for child in children):
            errors = [line for _, err in outputs for line in err.strip().splitlines()[-1:]]
            print(f"| {n} | failed: {errors[-1] if errors else '?'} | | |", flush=True)
            continue
        tokens, starts, ends = (sum(int(r[0]) for r in rows), min(float(r[1]) for r in rows), max(float(r[2]) for r in rows))
        rate = tokens / (ends - starts)
        alone = alone or rate
        print(f"| {n} | {rate:,.0f} | {rate / n:,.0f} | {rate / alone:.2f}x |", flush=True)


def sharing_run(args, device, dtype, tokenizer) -> None:
    model, train, data = small_training(args, device, dtype)
    with tempfile.TemporaryDirectory() as out:
        train_lora(model, tokenizer, data[:8], lora=LoraConfig(), train=train, seed=0, output_dir=Path(out) / "warm")
        sync(device)
        time.sleep(max(0.0, float(os.environ[SHARE]) - time.time()))
        started = time.time()
        train_lora(model, tokenizer, data, lora=LoraConfig(), train=train, seed=0, output_dir=Path(out) / "timed")
        sync(device)
        ended = time.time()
    print(f"share {n_tokens(data, tokenizer, train.max_length)} {started} {ended}", flush=True)


def memory_8b(args, device, dtype, tokenizer) -> None:
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, shape = SHAPES["llama-3.1-8b"]
    config = AutoConfig.for_model(model_type, **{**shape, **({"num_hidden_layers": 2} if args.tiny else {})})
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    train = TrainConfig(epochs=1, batch_size=8, validation_fraction=0.0, max_length=1024, warmup_ratio=0.0)
    data = items(8, 60 if args.tiny else 420, seed=5)  # ~512 tokens each (tiny: ~80)
    print(f"\n## one training step, llama-3.1-8b shape{' (tiny)' if args.tiny else ''}, {dtype}, 8 x ~512 tokens\n")
    print(f"weights: {weights:.1f} GiB\n")
    print("| adapters | peak GiB | over the weights |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory() as out:
        reset_peak(device)
        train_lora(model, tokenizer, data, lora=LoraConfig(), train=train, seed=0, output_dir=Path(out) / "a")
        ours = peak_memory_gib(device)
    print(f"| donors (adapters in the model's dtype, fused, one-pass head loss) | {ours:.1f} | {ours - weights:.1f} |", flush=True)
    peft_model = get_peft_model(model, peft_lora_config(LoraConfig(), fused=False, model=model))  # PEFT's default: fp32 adapters
    batch = tokenizer([i.question for i in data], return_tensors="pt", padding=True, truncation=True, max_length=512).to(device)
    reset_peak(device)
    peft_model.train()
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    default = peak_memory_gib(device)
    print(f"| PEFT's default (fp32 adapters, full-sequence cross-entropy) | {default:.1f} | {default - weights:.1f} |", flush=True)


def gemma_4b(args, device) -> None:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = {**GEMMA_4B_TEXT, **({"num_hidden_layers": 2, "vocab_size": 4096} if args.tiny else {})}
    vision = {**GEMMA_4B_VISION, **({"num_hidden_layers": 1, "image_size": 56} if args.tiny else {})}
    config = Gemma3Config(text_config=text, vision_config=vision)
    print(f"\n## gemma-3-4b{' (tiny)' if args.tiny else ''}: a vision-language checkpoint through load_model\n")
    with tempfile.TemporaryDirectory() as out:
        torch.manual_seed(0)
        with torch.device(device):  # random weights drawn on the device: seconds, where the CPU takes a minute
            checkpoint = Gemma3ForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
        checkpoint.save_pretrained(out)
        del checkpoint
        reset_peak(device)
        model, _ = load_model(out, dtype="bfloat16", device=device)
    names = [name for name, _ in model.named_parameters()]
    on_device = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    print(f"- loaded as {type(model).__name__}, {len(names)} parameter tensors, {on_device:.2f} GiB on {device}")
    print(f"- vision parameters on the device: {sum('vision' in n or 'multi_modal' in n for n in names)}")
    if device.type == "cuda":
        print(f"- memory allocated after the load: {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB")


def budget(args, device, dtype, tokenizer) -> None:
    from donors.tasks.prompts import build_requests

    print("\n## scoring under the token budget, lettered prompts of ~1,000 tokens, 256 items a batch at most\n")
    print("| model | token budget | batches | widest batch (tokens) | peak over weights GiB | budgeted GiB | share |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("llama-3.2-1b", "llama-3.1-8b"):
        model = build(name, args.tiny, device, dtype)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        scoring = items(16, 100, seed=7) if args.tiny else items(256, 800, seed=7)
        limit = native.token_budget(model, cached=False)  # lettered answers are single tokens: no cache
        requests = build_requests(scoring, tokenizer, chat_template=False)
        batches = native._batches(requests, 256, limit)
        widest = max(len(b) * max(native._tokens(requests[i]) for i in b) for b in batches)
        reset_peak(device)
        native.score_choices(model, tokenizer, scoring, chat_template=False, batch_size=256)
        over = peak_memory_gib(device) - weights / 2**30
        total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
        budgeted = native.GPU_MEMORY_SHARE * max(total - weights, 0) / 2**30
        share = f"{over / budgeted:.2f}" if budgeted else "n/a"
        print(f"| {name} | {limit} | {len(batches)} | {widest:,} | {over:.2f} | {budgeted:.1f} | {share} |", flush=True)
        del model
        reset_peak(device)


PARTS = ("head-loss", "determinism", "memory-8b", "gemma-4b", "token-budget", "train-profile", "gpu-sharing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--tokenizer", type=Path, help="a saved tokenizer folder (default: the embedded SmolLM2's)")
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per determinism run")
    parser.add_argument("--tiny", action="store_true", help="small shapes: to check it runs")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = pick_dtype(args.dtype)
    named = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if MODE not in os.environ and SHARE not in os.environ:
        print(f"device: {device} ({named}), {dtype}, torch {torch.__version__}")
    tokenizer = load_bench_tokenizer(args.tokenizer)
    for part in args.parts:
        started = time.perf_counter()
        if part == "head-loss":
            head_loss(args, device, dtype)
        elif part == "determinism":
            determinism(args, device, dtype, tokenizer)
        elif part == "memory-8b":
            memory_8b(args, device, dtype, tokenizer)
        elif part == "gemma-4b":
            gemma_4b(args, device)
        elif part == "token-budget":
            budget(args, device, dtype, tokenizer)
        elif part == "train-profile":
            train_profile(args, device, dtype, tokenizer)
        else:
            gpu_sharing(args, device, dtype, tokenizer)
        if MODE not in os.environ and SHARE not in os.environ:
            print(f"\n({part}: {time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
