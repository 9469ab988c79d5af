"""Evaluation throughput on the study's workload: K adapters, each scored on T targets of N items.

Three ways per model, each in its own process (so its peak RSS is its own):

* ``published``: per adapter, load the base, ``merge_and_unload``, save the merged model, then
  a fresh ``python -m lm_eval --model hf`` process over all targets (the task YAMLs and JSONL
  that the harness backend generates, ``--include_path``, a fixed ``--batch_size``);
* ``harness``: ``eval.backend: harness``: lm-eval in this process, adapters swapped onto one base;
* ``native``: ``eval.backend: native``, adapters swapped the same way;
* ``vllm`` (only when asked for, in an environment with vLLM: ``make vllm-cpu``):
  ``eval.backend: vllm``, one engine scoring all adapters together in multi-LoRA batches.

Then the option-text variant (choices scored as continuations after the question, as the
published ARC/HellaSwag/TruthfulQA tasks do): ``harness`` against ``native``, which encodes
each item's context once and reuses its key/value cache for the continuations.

The native process measures this machine's dense matmul throughput (best over a square
matmul and the model's own MLP shape, on its threads) and with it the FLOP lower bound:
2 x non-embedding parameters per prompt token (continuation tokens too, for option texts)
plus the output head's rows for the candidate tokens only. Adapters are random LoRA (r=4) on
every projection: throughput does not depend on what they learned.

    .venv/bin/python bench/eval_throughput.py --adapters 4 --targets 6 --items 100
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WAYS = ("published", "harness", "native", "native-logits")
OPTIONAL_WAYS = ("vllm",)
LANGUAGE_ORDER = ("en", "de", "fr", "es", "it", "pt", "id", "ar", "bn", "hi", "zh")


# -- the workload -------------------------------------------------------------------------
def target_cells(n: int) -> list[tuple[str, str]]:
    """The first ``n`` (task, language) cells of the embedded pack, languages outermost."""
    from donors.tasks.embedded import TASK_NAMES

    cells = [(task, lang) for lang in LANGUAGE_ORDER for task in TASK_NAMES]
    if n > len(cells):
        raise SystemExit(f"--targets {n}: the embedded pack has {len(cells)} cells")
    return cells[:n]


def load_targets(spec: dict) -> dict[tuple[str, str], list]:
    from donors.tasks import get_task

    return {(t, lang): get_task(t).load(lang, "test")[: spec["items"]] for t, lang in map(tuple, spec["targets"])}


def rss_gib(field: str = "VmRSS") -> float:
    """This process's resident set (``VmHWM``: its peak), in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return math.nan


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def matmul_gflops(m: int, k: int, n: int, reps: int = 5) -> float:
    """Best-of-``reps`` fp32 throughput of an (m x k) @ (k x n) product on this process's threads."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


# -- workers ------------------------------------------------------------------------------
def prepare(spec: dict) -> dict:
    """K random LoRA adapters (r=4, every projection), and the model's parameter counts."""
    import torch
    from peft import LoraConfig, get_peft_model

    from donors.config import LORA_TARGETS
    from donors.models import load_model

    base, _ = load_model(spec["model"], dtype="float32")
    total = sum(p.numel() for p in base.parameters())
    embedding = base.get_input_embeddings().weight.numel()
    hidden = base.get_input_embeddings().weight.shape[1]
    intermediate = max(m.out_features for n, m in base.named_modules() if n.endswith("up_proj"))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(LORA_TARGETS)))
    paths = []
    for k in range(spec["adapters"]):
        generator = torch.Generator().manual_seed(1000 + k)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
        path = Path(spec["workspace"]) / spec["model"] / f"adapter{k}"
        peft_model.save_pretrained(path)
        paths.append(str(path))
    info = {"adapters": paths, "body_params": total - embedding, "hidden": hidden, "intermediate": intermediate}
    info["bounds"] = {
        fmt: flop_bound({**spec, "items": n, "prompt_format": fmt, "adapters": paths[:k]}, info) for fmt, k, n in spec["formats"]
    }
    return info


def swap(peft_model, base, path: str):
    """Put the adapter at ``path`` on the one base, as ``donors.execute.work`` does."""
    from peft import PeftModel

    if peft_model is None:
        return PeftModel.from_pretrained(base, path, adapter_name="current").eval()
    peft_model.delete_adapter("current")
    peft_model.load_adapter(path, adapter_name="current")
    peft_model.set_adapter("current")
    return peft_model.eval()


def in_process(spec: dict) -> dict:
    """``harness`` or ``native``: one base model, adapters swapped, every target per adapter."""
    from donors.config import EvalConfig
    from donors.evaluate import get_scorer
    from donors.models import load_model

    started = time.perf_counter()
    base, tokenizer = load_model(spec["model"], dtype="float32")
    targets = load_targets(spec)
    native = spec["way"].startswith("native")
    config = EvalConfig(backend="native" if native else "harness", batch_size=spec["batch_size"], chat_template=spec["chat_template"])
    scorer = get_scorer(config, prompt_format=spec["prompt_format"], normalize=spec["way"] != "native-logits")
    setup = time.perf_counter() - started
    peft_model, per_adapter, cpu, rss, predictions, gflops = None, [], [], [], {}, []
    for k, path in enumerate(spec["adapters"]):
        if native:
            # The machine's throughput drifts with its other load: measure it alongside, outside the timed part.
            gflops.append(matmul_gflops(2048, 2048, 2048, reps=3))
        start, start_cpu = time.perf_counter(), time.process_time()
        peft_model = swap(peft_model, base, path)
        results = scorer.score(peft_model, tokenizer, targets, model_name=spec["model"])
        per_adapter.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        rss.append(rss_gib())
        predictions[k] = {f"{t}/{lang}": [p.predicted for p in r.predictions] for (t, lang), r in results.items()}
    if native:
        gflops.append(matmul_gflops(2048, 2048, 2048, reps=3))
    return {
        "setup_s": setup,
        "adapter_s": per_adapter,
        "adapter_cpu_s": cpu,
        "rss_after_adapter_gib": rss,
        "peak_rss_gib": rss_gib("VmHWM"),
        "predictions": predictions,
        "gflops_alongside": gflops,
    }


def with_vllm(spec: dict) -> dict:
    """``vllm``: one engine; every adapter's requests in the same engine call (multi-LoRA batches)."""
    from donors.evaluate.vllm_backend import VllmScorer

    started = time.perf_counter()
    scorer = VllmScorer(
        spec["model"],
        chat_template=spec["chat_template"],
        prompt_format=spec["prompt_format"],
        lora_rank=4,
        dtype="float32",
        max_loras=len(spec["adapters"]),
    )
    targets = load_targets(spec)
    setup = time.perf_counter() - started
    start, start_cpu = time.perf_counter(), _cpu_with_children()
    predictions: dict = {}
    for k, (task, lang), result in scorer.score_adapters([(k, path, targets) for k, path in enumerate(spec["adapters"])]):
        predictions.setdefault(k, {})[f"{task}/{lang}"] = [p.predicted for p in result.predictions]
    # All adapters are scored together: one time for all of them.
    return {
        "setup_s": setup,
        "adapter_s": [time.perf_counter() - start],
        "adapter_cpu_s": [_cpu_with_children() - start_cpu],
        "peak_rss_gib": rss_gib("VmHWM"),
        "predictions": predictions,
    }


def flop_bound(spec: dict, info: dict) -> dict:
    """FLOPs the answers strictly need, and the best dense matmul throughput this process gets."""
    from donors.models import load_tokenizer
    from donors.tasks.prompts import build_requests

    tokenizer = load_tokenizer(spec["model"])
    body_tokens = head_rows = 0
    for items in load_targets(spec).values():
        for r in build_requests(items, tokenizer, chat_template=spec["chat_template"], prompt_format=spec["prompt_format"]):
            body_tokens += len(r.context_ids) + sum(len(c) - 1 for c in r.continuations)
            head_rows += sum(len(c) for c in r.continuations)
    per_adapter = 2 * info["body_params"] * body_tokens + 2 * info["hidden"] * head_rows
    shapes = [(2048, 2048, 2048), (spec["batch_size"] * 48, info["hidden"], info["intermediate"])]
    return {
        "flops": per_adapter * len(spec["adapters"]),
        "tokens": body_tokens * len(spec["adapters"]),
        "gflops": max(matmul_gflops(*s) for s in shapes),
    }


def read_samples(output_dir: Path, spec: dict) -> dict[str, list[int]]:
    """lm-eval's logged samples -> the predicted choice per item, in our item order."""
    from donors.evaluate.harness import lm_eval_task_name

    predicted = {}
    for task, lang in map(tuple, spec["targets"]):
        (path,) = glob.glob(str(output_dir / "**" / f"samples_{lm_eval_task_name(task, lang)}_*.jsonl"), recursive=True)
        by_id = {}
        for line in Path(path).read_text().splitlines():
            sample = json.loads(line)
            lls = [float(resp[0]) for resp in sample["filtered_resps"]]
            by_id[sample["doc"]["id"]] = max(range(len(lls)), key=lls.__getitem__)
        ids = [
            json.loads(line)["id"] for line in (Path(spec["tasks_dir"]) / f"{lm_eval_task_name(task, lang)}.jsonl").read_text().splitlines()
        ]
        predicted[f"{task}/{lang}"] = [by_id[i] for i in ids]
    return predicted


def published(spec: dict) -> dict:
    """Per adapter: merge and save, then a fresh lm-eval process over all targets."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from donors.evaluate.harness import lm_eval_task_name
    from donors.models import resolve_model

    source = resolve_model(spec["model"])
    names = ",".join(lm_eval_task_name(t, lang) for t, lang in spec["targets"])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(spec["threads"]),
        "MKL_NUM_THREADS": str(spec["threads"]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    merge_s, eval_s, cpu, predictions = [], [], [], {}
    for k, path in enumerate(spec["adapters"]):
        merged = Path(spec["workspace"]) / "merged"
        out = Path(spec["workspace"]) / spec["model"] / f"lm_eval_out{k}"
        start, start_cpu = time.perf_counter(), _cpu_with_children()
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(source, dtype="float32"), path).merge_and_unload()
        model.save_pretrained(merged)
        AutoTokenizer.from_pretrained(source).save_pretrained(merged)
        del model
        merge_s.append(time.perf_counter() - start)
        command = [
            sys.executable,
            "-m",
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={merged},dtype=float32",
            "--tasks",
            names,
            "--include_path",
            spec["tasks_dir"],
            "--batch_size",
            str(spec["batch_size"]),
            "--device",
            "cpu",
            "--log_samples",
            "--output_path",
            str(out),
        ]
        if spec["chat_template"]:
            command.append("--apply_chat_template")
        start = time.perf_counter()
        done = subprocess.run(command, cwd=spec["workspace"], env=env, capture_output=True, text=True)
        eval_s.append(time.perf_counter() - start)
        cpu.append(_cpu_with_children() - start_cpu)
        if done.returncode:
            raise RuntimeError(f"lm_eval failed:\n{done.stderr[-3000:]}")
        predictions[k] = read_samples(out, spec)
        shutil.rmtree(merged)
        shutil.rmtree(out)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return {
        "merge_s": merge_s,
        "eval_s": eval_s,
        "adapter_s": [m + e for m, e in zip(merge_s, eval_s)],
        "adapter_cpu_s": cpu,
        "setup_s": 0.0,
        "peak_rss_gib": max(rss_gib("VmHWM"), children),
        "predictions": predictions,
    }


def _cpu_with_children() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


WORKERS = {
    "prepare": prepare,
    "native": in_process,
    "native-logits": in_process,
    "harness": in_process,
    "published": published,
    "vllm": with_vllm,
}


def run_worker(kind: str, spec: dict) -> tuple[dict, float]:
    """Run ``kind`` in a fresh process; its result and its wall time, start-up included."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, result_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(spec))
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(spec["threads"]),
            "MKL_NUM_THREADS": str(spec["threads"]),
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # vLLM on a CPU: its engine in this process (its CPU time counted), on as many cores as the others get.
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "VLLM_CPU_OMP_THREADS_BIND": "0" if spec["threads"] == 1 else "auto",
        }
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, __file__, "--worker", kind, str(spec_file), str(result_file)], env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"{kind} worker failed:\n{done.stderr[-4000:]}")
        return json.loads(result_file.read_text()), wall


def worker_main(kind: str, spec_file: str, result_file: str) -> None:
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # the harness logs every task it builds
    spec = json.loads(Path(spec_file).read_text())
    set_threads(spec["threads"])
    Path(result_file).write_text(json.dumps(WORKERS[kind](spec)))


# -- the driver ---------------------------------------------------------------------------
def agreement(a: dict, b: dict) -> float:
    pairs = [(x, y) for k in a for t in a[k] for x, y in zip(a[k][t], b[k][t])]
    return sum(x == y for x, y in pairs) / len(pairs)


def run_model(model: str, args, workspace: Path) -> dict:
    from donors.evaluate.harness import write_task

    chat = {"on": True, "off": False}.get(args.chat_template)
    if chat is None:
        from donors.models import load_tokenizer

        chat = bool(getattr(load_tokenizer(model), "chat_template", None))
    cells = target_cells(args.targets)
    base_spec = {
        "model": model,
        "workspace": str(workspace),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "chat_template": chat,
        "targets": cells,
    }
    lettered = [w for w in args.ways if w != "native-logits" or model in args.logits_only]
    runs = [
        ("lettered", args.adapters, args.items, lettered),
        ("continuation", args.option_adapters, args.option_items, [w for w in args.ways if w in ("harness", "native", "vllm")]),
    ]
    runs = [run for run in runs if run[1] and run[2]]
    formats = [(fmt, k, n) for fmt, k, n, _ in runs]
    info, prep_s = run_worker("prepare", {**base_spec, "adapters": max(k for _, k, _ in formats), "formats": formats})
    report = {"model": model, "chat_template": chat, "prepare_s": prep_s, "info": info, "ways": {}, "options": {}}
    for prompt_format, k, n, ways in runs:
        into = report["ways"] if prompt_format == "lettered" else report["options"]
        tasks_dir = workspace / model / f"tasks-{prompt_format}"
        spec = {
            **base_spec,
            "items": n,
            "prompt_format": prompt_format,
            "adapters": info["adapters"][:k],
            "tasks_dir": str(tasks_dir),
            "info": info,
        }
        for (task, lang), items in load_targets(spec).items():
            write_task(tasks_dir, task, lang, items, prompt_format)
        for way in ways:
            result, wall = run_worker(way, {**spec, "way": way})
            result.update(wall_s=wall, scoring_s=sum(result["adapter_s"]), cpu_s=sum(result["adapter_cpu_s"]))
            if way.startswith("native"):
                bound = info["bounds"][prompt_format]
                alongside = result["gflops_alongside"]
                result["bound"] = {**bound, "gflops": max(bound["gflops"], *alongside), "gflops_alongside": sum(alongside) / len(alongside)}
            result["items"] = k * n * len(cells)
            into[way] = result
            print(f"  {model} {prompt_format} {way}: {wall:.1f} s", flush=True)
    return report


def fmt_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def ratio(way: dict, native: dict | None, key: str) -> str:
    return f"{way[key] / native[key]:.2f}x" if native else "-"


def print_table(reports: list[dict]) -> None:
    print(
        fmt_row(
            [
                "model",
                "format",
                "way",
                "wall s",
                "scoring s",
                "scoring CPU s",
                "items/s (scoring)",
                "wall / native",
                "scoring / native",
                "CPU / native",
                "peak RSS GiB",
                "agrees w/ native",
            ]
        )
    )
    print(fmt_row(["---"] * 12))
    for r in reports:
        for fmt, ways in (("lettered", r["ways"]), ("options", r["options"])):
            native = ways.get("native")
            for way, w in ways.items():
                agree = f"{100 * agreement(w['predictions'], native['predictions']):.2f}%" if native else "-"
                print(
                    fmt_row(
                        [
                            r["model"],
                            fmt,
                            way,
                            f"{w['wall_s']:.1f}",
                            f"{w['scoring_s']:.1f}",
                            f"{w['cpu_s']:.1f}",
                            f"{w['items'] / w['scoring_s']:.2f}",
                            ratio(w, native, "wall_s"),
                            ratio(w, native, "scoring_s"),
                            ratio(w, native, "cpu_s"),
                            f"{w['peak_rss_gib']:.2f}",
                            agree,
                        ]
                    )
                )


def bound_note(model: str, fmt: str, way: str, w: dict) -> str:
    """The native run against its FLOP lower bound, at the best throughput and at the one measured alongside it."""
    b = w["bound"]
    best, alongside = b["flops"] / (b["gflops"] * 1e9), b["flops"] / (b["gflops_alongside"] * 1e9)
    rss = w["rss_after_adapter_gib"]
    return (
        f"- {model} {fmt} {way}: FLOP lower bound {b['flops'] / 1e12:.2f} TFLOP ({b['tokens']} body tokens) = "
        f"{best:.1f} s at the best {b['gflops']:.0f} GFLOP/s, {alongside:.1f} s at the {b['gflops_alongside']:.0f} GFLOP/s "
        f"measured alongside; scoring took {w['scoring_s']:.1f} s wall ({w['scoring_s'] / best:.2f}x the best-case bound), "
        f"{w['cpu_s']:.1f} s CPU ({w['cpu_s'] / best:.2f}x best-case, {w['cpu_s'] / alongside:.2f}x alongside); "
        f"RSS after adapter 1 / {len(rss)}: {rss[0]:.2f} / {rss[-1]:.2f} GiB"
    )


def print_notes(reports: list[dict]) -> None:
    for r in reports:
        for fmt, ways in (("lettered", r["ways"]), ("options", r["options"])):
            for way, w in ways.items():
                if way.startswith("native"):
                    print(bound_note(r["model"], fmt, way, w))
            pub = ways.get("published")
            if pub and "harness" in ways:
                k = len(pub["eval_s"])
                print(
                    f"- {r['model']} published, per adapter: merge+save {sum(pub['merge_s']) / k:.1f} s, lm-eval process "
                    f"{sum(pub['eval_s']) / k:.1f} s (the in-process harness scores the same in "
                    f"{ways['harness']['scoring_s'] / k:.1f} s)"
                )


def print_report(reports: list[dict], args, started: float) -> None:
    print(f"\n## Evaluation throughput ({datetime.date.today().isoformat()})\n")
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPU(s), torch threads per process: {args.threads}, "
        f"fp32; batch size {args.batch_size} (fixed) for every way; chat template: {args.chat_template}"
    )
    print(
        f"workload: {args.adapters} adapters x {args.targets} targets x {args.items} items (lettered); option-text "
        f"variant {args.option_adapters} adapters x {args.targets} targets x {args.option_items} items; whole run "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    print_table(reports)
    print()
    print_notes(reports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--targets", type=int, default=6)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--option-adapters", type=int, default=2, help="adapters for the option-text variant (0: skip it)")
    parser.add_argument("--option-items", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (see docs/eval-benchmark.md)")
    parser.add_argument(
        "--chat-template",
        choices=["auto", "on", "off"],
        default="off",
        help="auto: on for a model that has one (the study's default for an instruct model)",
    )
    parser.add_argument("--ways", nargs="+", choices=WAYS + OPTIONAL_WAYS, default=list(WAYS))
    parser.add_argument(
        "--logits-only",
        nargs="*",
        default=["gemma3-270m"],
        help="models that also get native-logits: native without the full-vocabulary normaliser",
    )
    parser.add_argument("--json", help="also write the raw measurements here, after each model")
    args = parser.parse_args()
    started = time.perf_counter()
    workspace = Path(tempfile.mkdtemp(prefix="donors-eval-bench-"))
    reports = []
    try:
        for model in args.models:
            reports.append(run_model(model, args, workspace))
            if args.json:
                Path(args.json).write_text(json.dumps(reports))
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
        print_report(reports, args, started)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker_main(*sys.argv[2:])
    else:
        main()
