"""Training and scoring throughput of the published model shapes on whatever device is present.

Randomly initialised models with the published configurations (real layer shapes and
vocabularies: Llama-3.2-1B, Qwen2.5-0.5B, Gemma-3-1B, and Llama-3.1-8B on request, written out below), the SmolLM2
tokenizer of the embedded model (its ids fit every one of these vocabularies), and the
study's own code paths: ``donors.train.lora.train_lora`` (LoRA r=32 on all seven
projections, the one-pass head loss) for ``--steps`` optimiser steps of ``--batch``
examples of about ``--length`` tokens, then the native scorer on ``--items`` lettered items.
Random weights train and score at the speed trained ones do: the work is the same matmuls.
Training runs with the default kernels, not the deterministic ones a study uses unless
``train.deterministic: false`` (``bench/gpu_numerics.py --parts determinism`` measures their cost).

Printed per model: tokens/s (training: the steady rate of optimiser steps, from two timed
calls of different lengths, and apart from it the seconds each adapter pays once), peak device memory (on a CPU: the process's peak RSS), the
FLOP-bound ratio (time taken over the time the matmul FLOPs, 4 (training) or 2 (scoring) x
non-embedding parameters x tokens, would take at the device's measured dense matmul rate)
and the utilisation, counted as ``donors plan`` counts it (its FLOPs, on all parameters, over
the time, over ``--peak-tflops``, default the H100 bf16 peak ``donors plan`` assumes): the
``--mfu`` to give ``donors plan`` with that ``--tflops``. Load time (building the model on
the device) is printed apart from training time.

    .venv/bin/python bench/gpu_throughput.py                      # on a GPU: the full shapes
    .venv/bin/python bench/gpu_throughput.py --tiny --steps 3     # anywhere: 2 layers, to check it runs
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from donors.config import EvalConfig, LoraConfig, TrainConfig  # noqa: E402
from donors.evaluate import get_scorer  # noqa: E402
from donors.models import embedded_model_path, pick_dtype  # noqa: E402
from donors.plan import DEFAULT_TFLOPS, EVAL_FLOPS_PER_PARAM_TOKEN, TRAIN_FLOPS_PER_PARAM_TOKEN  # noqa: E402
from donors.tasks.item import Item  # noqa: E402
from donors.tasks.prompts import encode_example, training_text  # noqa: E402
from donors.train.lora import train_lora  # noqa: E402

# The published configurations (config.json of each model on the hub), the fields that set the work.
SHAPES = {
    "llama-3.2-1b": (
        "llama",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            vocab_size=128256,
            tie_word_embeddings=True,
            rms_norm_eps=1e-5,
            max_position_embeddings=131072,
        ),
    ),
    "qwen2.5-0.5b": (
        "qwen2",
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            max_position_embeddings=32768,
        ),
    ),
    "gemma-3-1b": (
        "gemma3_text",
        dict(
            hidden_size=1152,
            intermediate_size=6912,
            num_hidden_layers=26,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            vocab_size=262144,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            sliding_window=512,
            query_pre_attn_scalar=256,
            max_position_embeddings=32768,
        ),
    ),
    "llama-3.1-8b": (
        "llama",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=128256,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            max_position_embeddings=131072,
        ),
    ),
}
SHORT_STEPS = 2
"""Optimiser steps of the shorter timed training call (``--steps`` is the longer)."""
DEFAULT_MODELS = ("llama-3.2-1b", "qwen2.5-0.5b", "gemma-3-1b")
"""What a plain run measures: the published grid's smallest model of each family (llama-3.1-8b on request)."""
WORDS = "the a river stone of light north answer between every small number city red".split()


def build(name: str, tiny: bool, device: torch.device, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, shape = SHAPES[name]
    config = AutoConfig.for_model(model_type, **{**shape, **({"num_hidden_layers": 2} if tiny else {})})
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def load_bench_tokenizer(folder: Path | None):
    """A saved tokenizer (what a GPU machine without the embedded model's package is given), or the embedded SmolLM2's."""
    from donors.models import load_tokenizer

    if folder is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder)
    embedded_model_path("smollm2-135m")
    return load_tokenizer("smollm2-135m")


def items(n: int, length_words: int, seed: int) -> list[Item]:
    """Lettered four-option items of about ``length_words`` words: random text, real prompt format."""
    generator = torch.Generator().manual_seed(seed)

    def words(k: int) -> str:
        return " ".join(WORDS[i] for i in torch.randint(len(WORDS), (k,), generator=generator).tolist())

    return [Item(f"q{seed}-{i}", "bench", "en", words(length_words) + "?", tuple(words(3) for _ in range(4)), i % 4) for i in range(n)]


def n_tokens(batch: list[Item], tokenizer, max_length: int) -> int:
    """Tokens the model reads for these items, as training encodes them (prompt, letter, no chat template)."""
    texts = (training_text(i, tokenizer, prompt_format="lettered", chat_template=False) for i in batch)
    return sum(len(encode_example(prompt, target, tokenizer, max_length).input_ids) for prompt, target in texts)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB; the process's peak RSS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """The best of five dense matmuls: the rate the FLOP bound is set against."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(5):
        sync(device)
        started = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e12


def run(name: str, args, device: torch.device, dtype: torch.dtype, tokenizer, rate: float) -> dict:
    started = time.perf_counter()
    model = build(name, args.tiny, device, dtype)
    sync(device)
    build_seconds = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())  # what donors plan counts (tied embeddings once)
    # What the FLOP bound counts: the embedding lookup is no matmul; the head runs at the answer positions only.
    computing = params - model.get_input_embeddings().weight.numel()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_items = items(args.batch * args.steps, args.length, seed=1)
    train = TrainConfig(epochs=1, batch_size=args.batch, validation_fraction=0.0, max_length=args.length * 2, warmup_ratio=0.0)
    # Two timed calls, of a few and of --steps batches: their difference is the steady rate of optimiser steps;
    # what the short call took beyond it is what every adapter pays once (wrapping the model, encoding, saving).
    timed = {}
    with tempfile.TemporaryDirectory() as out:
        # One step first: kernels chosen and memory pools filled are not the throughput.
        train_lora(model, tokenizer, items(args.batch, args.length, 2), lora=LoraConfig(), train=train, seed=0, output_dir=Path(out) / "a")
        for steps in (SHORT_STEPS, args.steps):
            chosen = train_items[: args.batch * steps]
            sync(device)
            started = time.perf_counter()
            train_lora(model, tokenizer, chosen, lora=LoraConfig(), train=train, seed=0, output_dir=Path(out) / str(steps))
            sync(device)
            timed[steps] = (time.perf_counter() - started, n_tokens(chosen, tokenizer, train.max_length))
    (short_seconds, short_tokens), (long_seconds, long_tokens) = timed[SHORT_STEPS], timed[args.steps]
    train_rate = (long_tokens - short_tokens) / (long_seconds - short_seconds)
    adapter_overhead = max(short_seconds - short_tokens / train_rate, 0.0)
    train_memory = peak_memory_gib(device)

    score_items = items(args.items, args.length, seed=3)
    scorer = get_scorer(EvalConfig(chat_template=False, batch_size=args.eval_batch))
    scorer.score(model, tokenizer, {("bench", "en"): score_items[: args.eval_batch]})  # warm-up
    sync(device)
    started = time.perf_counter()
    scorer.score(model, tokenizer, {("bench", "en"): score_items})
    sync(device)
    score_seconds = time.perf_counter() - started
    score_tokens = n_tokens(score_items, tokenizer, 10**6)

    # Matmul FLOP/s achieved (what the FLOP bound counts) and as donors plan counts them (all parameters).
    score_rate = score_tokens / score_seconds
    achieved = {"train": TRAIN_FLOPS_PER_PARAM_TOKEN * computing * train_rate, "score": EVAL_FLOPS_PER_PARAM_TOKEN * computing * score_rate}
    planned = {"train": TRAIN_FLOPS_PER_PARAM_TOKEN * params * train_rate, "score": EVAL_FLOPS_PER_PARAM_TOKEN * params * score_rate}
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "model": name + (" (tiny: 2 layers)" if args.tiny else ""),
        "params_m": params / 1e6,
        "build_s": build_seconds,
        "train_steps": args.steps,
        "train_tokens_per_s": train_rate,
        "train_adapter_overhead_s": adapter_overhead,
        "train_peak_gib": train_memory,
        "train_flop_bound_ratio": rate * 1e12 / achieved["train"],
        "train_mfu": planned["train"] / (args.peak_tflops * 1e12),
        "score_tokens_per_s": score_rate,
        "score_peak_gib": peak_memory_gib(device),
        "score_flop_bound_ratio": rate * 1e12 / achieved["score"],
        "score_mfu": planned["score"] / (args.peak_tflops * 1e12),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=12, help=f"optimiser steps of the longer timed call (more than {SHORT_STEPS})")
    parser.add_argument("--batch", type=int, default=8, help="examples per step (train.batch_size)")
    parser.add_argument("--length", type=int, default=200, help="words per question (~1.2 tokens each)")
    parser.add_argument("--items", type=int, default=256, help="items scored per model")
    parser.add_argument("--eval-batch", type=int, default=32)
    parser.add_argument("--tiny", action="store_true", help="2 layers per model (real widths and vocabularies): to check it runs")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help=f"the peak `donors plan --tflops` assumes (GPU default {DEFAULT_TFLOPS:g})"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--tokenizer", type=Path, help="a saved tokenizer folder (default: the embedded SmolLM2's)")
    args = parser.parse_args()
    if args.steps <= SHORT_STEPS:
        parser.error(f"--steps must be more than {SHORT_STEPS}: the rate is the difference between two calls")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = pick_dtype(args.dtype)
    rate = matmul_tflops(device, dtype, 4096 if device.type == "cuda" else 1024)
    if args.peak_tflops is None:
        args.peak_tflops = DEFAULT_TFLOPS if device.type == "cuda" else rate
    named = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({named}), {dtype}, torch {torch.__version__}; dense matmul {rate:.1f} TFLOP/s measured")
    tokenizer = load_bench_tokenizer(args.tokenizer)
    rows = []
    for name in args.models:
        row = run(name, args, device, dtype, tokenizer, rate)
        rows.append(row)
        print(
            f"{row['model']}: {row['params_m']:.0f}M params, built in {row['build_s']:.1f} s | train {row['train_tokens_per_s']:,.0f} tok/s "
            f"(+{row['train_adapter_overhead_s']:.2f} s per adapter), peak "
            f"{row['train_peak_gib']:.1f} GiB, {row['train_flop_bound_ratio']:.1f}x the FLOP bound, utilisation "
            f"{row['train_mfu']:.1%} | score {row['score_tokens_per_s']:,.0f} tok/s, peak {row['score_peak_gib']:.1f} GiB, "
            f"{row['score_flop_bound_ratio']:.1f}x the FLOP bound, utilisation {row['score_mfu']:.1%}",
            flush=True,
        )
    if not args.tiny:
        train_mfu = min(row["train_mfu"] for row in rows)
        print(f"for donors plan: --tflops {args.peak_tflops:g} --mfu {train_mfu:.3f}  (the slowest model's training utilisation)")
    if args.json:
        args.json.write_text(json.dumps({"device": named, "dtype": str(dtype), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
