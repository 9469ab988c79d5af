"""The units of work every executor runs: train one adapter, score a group of model states.

They read config and items and write adapters to storage, but never touch the store:
they return records, and the caller (the one writer) commits them. That is what lets the
same code run in this process or in a Ray worker on another machine.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import traceback
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from donors.config import StudyConfig
from donors.errors import DonorsError
from donors.evaluate import get_scorer
from donors.grid import Cell
from donors.jobs import StateWork, TrainJob
from donors.models import dtype_name, load_model, pick_device, pick_dtype
from donors.records import AdapterRecord, ModelState, TargetResult
from donors.tasks.data import fingerprint
from donors.tasks.item import Item, stable_digest
from donors.train.lora import AdapterChanged, adapter_digest, check_adapter_loaded, train_lora, verify_adapter


def library_versions() -> dict[str, str]:
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "donors": __import__("donors").__version__,
    }


CUBLAS_WORKSPACE = ":4096:8"
"""CUBLAS_WORKSPACE_CONFIG for deterministic cuBLAS; read when a process first uses cuBLAS, so set before that."""


class DeviceError(DonorsError, RuntimeError):
    """A worker that cannot use the accelerator it was given; the message names the fix."""


def _given_gpus(ray_gpu_ids: Sequence | None = None) -> list[str]:
    """The GPUs this process was given: Ray's assignment, else CUDA_VISIBLE_DEVICES (unset or empty: none)."""
    if ray_gpu_ids:
        return [str(i) for i in ray_gpu_ids]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return [] if visible in ("", "-1", "NoDevFiles") else [v for v in visible.split(",") if v.strip()]


def check_worker_device(ray_gpu_ids: Sequence | None = None) -> None:
    """Refuse to start on the CPU when this process was given a GPU: the study would run, hundreds of times slower.

    A CPU build of torch (``2.x+cpu``) is the usual cause: the fix is the CUDA build, named
    in the message. A CUDA build that sees no device points at the driver instead.
    """
    given = _given_gpus(ray_gpu_ids)
    if not given or torch.cuda.is_available():
        return
    where = f"GPU(s) {', '.join(given)} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r})"
    if torch.version.cuda is None:
        version = torch.__version__.split("+")[0]
        raise DeviceError(
            f"this worker on {platform.node()} was given {where} but torch {torch.__version__} is a CPU build, so it would "
            f"train and score on the CPU. Install torch's CUDA build in this environment on every node: "
            f"pip install torch=={version} --index-url https://download.pytorch.org/whl/cu126 (the cu12x at or below "
            "the CUDA version nvidia-smi shows), or give the workers no GPU (ray.gpus_per_job: 0, CUDA_VISIBLE_DEVICES='')"
        )
    raise DeviceError(
        f"this worker on {platform.node()} was given {where} but torch {torch.__version__} (CUDA {torch.version.cuda}) "
        "sees no GPU: check the driver with nvidia-smi (a driver older than CUDA "
        f"{torch.version.cuda} needs an older torch build), or give the workers no GPU (ray.gpus_per_job: 0)"
    )


def prepare_worker(config: StudyConfig, ray_gpu_ids: Sequence | None = None) -> None:
    """What a process does before its first CUDA call: check the device, and ask cuBLAS for a deterministic workspace."""
    check_worker_device(ray_gpu_ids)
    if config.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Warnings logged under ``donors`` (out-of-memory back-offs) while this runs, as text for the driver's log.

    A Ray worker's log stays on its node; what is collected here travels back with its results.
    """
    collected: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            collected.append(f"{platform.node()}: {record.getMessage()}")

    handler = _Collect(logging.WARNING)
    logger = logging.getLogger("donors")
    logger.addHandler(handler)
    try:
        yield collected
    finally:
        logger.removeHandler(handler)


@contextmanager
def deterministic_training(enabled: bool, device_type: str) -> Iterator[dict[str, str]]:
    """Deterministic kernels on a CUDA device while this runs; the previous setting is restored after.

    Yields ``{"deterministic": ...}`` for the adapter's record, filled in when the block ends:
    "true" when the run used deterministic kernels only (always on a CPU, whose kernels are),
    "false" when the mode was off on a GPU or an operation without a deterministic variant ran
    (it warns instead of failing the run: ``warn_only``; the operation is named in the log).
    """
    outcome = {"deterministic": "true"}
    if device_type != "cuda":
        yield outcome
        return
    if not enabled:
        outcome["deterministic"] = "false"
        yield outcome
        return
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    env_before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield outcome
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        if env_before is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    seen = set()  # "always" caught every repeat (a warning per step): each is passed on once, as the default filter would
    for warning in caught:
        text = str(warning.message)
        if (text, warning.category, warning.filename, warning.lineno) in seen:
            continue
        seen.add((text, warning.category, warning.filename, warning.lineno))
        if "deterministic" in text:
            outcome["deterministic"] = "false"
            logging.getLogger(__name__).warning("training was not deterministic: %s", text.splitlines()[0])
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def free_device_memory() -> None:
    """Return what the last unit of work left on the accelerator (its adapter, optimiser, cached blocks)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_on_device(name: str, config: StudyConfig):
    """``load_model``, its weights read straight onto the accelerator (no full copy in host memory first)."""
    device = pick_device()
    with torch.device(device) if device.type != "cpu" else nullcontext():
        return load_model(name, dtype=config.dtype, trust_remote_code=config.trust_remote_code)


def _device_type(model) -> str:
    return next(model.parameters()).device.type


def describe(error: BaseException) -> str:
    """The error and the last frames of its traceback, as stored for `donors status`."""
    return f"{type(error).__name__}: {error}\n" + "".join(traceback.format_tb(error.__traceback__)[-3:])


def train_adapter(
    config: StudyConfig,
    job: TrainJob,
    items: Sequence[Item],
    storage_dir: Path,
    on_step: Callable[[int, int], None] | None = None,
    base: tuple | None = None,
) -> AdapterRecord:
    """Fine-tune the base model on one source; the adapter lands under ``storage_dir``.

    ``base``: an already loaded (model, tokenizer) of ``job.model`` to train on (it comes back
    unchanged, frozen); by default a fresh one is loaded.
    """
    model, tokenizer = base or load_on_device(job.model, config)
    path = job.adapter_dir(storage_dir, key=stable_digest(config.recipe_hash() + fingerprint(items))[:12])
    with deterministic_training(config.train.deterministic, _device_type(model)) as determinism:
        result = train_lora(
            model,
            tokenizer,
            items,
            lora=config.lora,
            train=config.train_config_for(job.source.task),
            seed=job.seed,
            output_dir=path,
            model_name=job.model,
            prompt_format=config.train_format,
            on_step=on_step,
        )
    return AdapterRecord(
        adapter_id=job.job_id,
        model=job.model,
        source_task=job.source.task,
        source_language=job.source.language,
        seed=job.seed,
        path=str(path.relative_to(storage_dir)),
        recipe_hash=config.recipe_hash(),
        train_ids=result.train_ids,
        validation_ids=result.validation_ids,
        best_epoch=result.best_epoch,
        validation_losses=result.validation_losses,
        train_seconds=result.seconds,
        versions={**library_versions(), **determinism, "dtype": weights_dtype(model)},
        sha256=adapter_digest(path),
    )


def weights_dtype(model) -> str:
    """The dtype a model's weights compute in, as the store records it ('bfloat16', 'float32')."""
    return dtype_name(next(model.parameters()).dtype)


def _verified_adapters(
    work: Sequence[StateWork], on_failure: Callable[[ModelState, Cell, BaseException], None]
) -> Iterator[tuple[StateWork, Path | None]]:
    """Each unit with its adapter's folder, checked (:func:`verify_adapter`) as the unit is reached; ``None`` for the base.

    Lazy, so a scorer that loads adapters one by one checks each just before loading it. A unit
    whose adapter is not the one stored fails its targets with :class:`AdapterChanged` and is skipped.
    """
    for unit in work:
        try:
            path = None if unit.state.is_base else verify_adapter(unit.adapter_path, unit.adapter_sha256)
        except AdapterChanged as error:
            for target in unit.targets:
                on_failure(unit.state, target, error)
            continue
        yield unit, path


def evaluate_states(
    config: StudyConfig,
    model_name: str,
    work: Sequence[StateWork],
    test_items: dict[Cell, list[Item]],
    on_result: Callable[[ModelState, TargetResult], None],
    on_failure: Callable[[ModelState, Cell, BaseException], None],
    on_items: Callable[[int], None] | None = None,
) -> None:
    """Score each state's targets with the base model loaded once.

    Adapters are swapped onto the one base (PEFT's load/delete), so memory stays flat as
    the number of adapters grows. A target that fails is reported and the rest go on; an
    adapter that cannot be loaded fails its state's targets, and the other states go on. An
    adapter whose files are not the ones stored fails them with :class:`AdapterChanged`, which
    the executors answer by training it again.
    """
    if config.eval.backend == "vllm":
        _evaluate_with_vllm(config, model_name, work, test_items, on_result, on_failure, on_items)
        return
    from peft import PeftModel

    base, tokenizer = load_on_device(model_name, config)
    backend = get_scorer(config.eval)
    dtype = weights_dtype(base)
    peft_model = None
    for unit, path in _verified_adapters(work, on_failure):  # a changed adapter is never loaded: the base is untouched
        if unit.state.is_base:
            scorer = peft_model or base
            context = peft_model.disable_adapter() if peft_model else nullcontext()
        else:
            try:
                # The adapter in the base's dtype: what training's forward computed with (see FusedLoraLinear).
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(base, path, adapter_name="current", autocast_adapter_dtype=False)
                else:
                    if "current" in peft_model.peft_config:
                        peft_model.delete_adapter("current")
                    peft_model.load_adapter(path, adapter_name="current", autocast_adapter_dtype=False)
                    peft_model.set_adapter("current")
                check_adapter_loaded(peft_model, path, "current")
            except Exception as error:  # noqa: BLE001 - this state's targets fail; the other states go on
                for target in unit.targets:
                    on_failure(unit.state, target, error)
                if peft_model is None:  # a failed first load may have left LoRA layers in the base: start clean
                    base, tokenizer = load_on_device(model_name, config)
                continue
            peft_model.eval()
            scorer, context = peft_model, nullcontext()
        with context:
            for target in unit.targets:
                try:
                    (result,) = backend.score(
                        scorer, tokenizer, {target: test_items[target]}, model_name=model_name, on_batch=on_items
                    ).values()
                    on_result(unit.state, result.computed_in(dtype))
                except Exception as error:  # noqa: BLE001 - one failed target must not stop the others
                    on_failure(unit.state, target, error)


def vllm_engine_args(config: StudyConfig) -> dict:
    """``eval.vllm`` as keywords of ``vllm.LLM``: only the options set, so vLLM's own defaults hold otherwise."""
    options = config.eval.vllm
    args = {k: v for k in ("gpu_memory_utilization", "max_num_seqs") if (v := getattr(options, k)) is not None}
    if options.enforce_eager:
        args["enforce_eager"] = True
    return {**args, **options.engine_args}


def _evaluate_with_vllm(config, model_name, work, test_items, on_result, on_failure, on_items) -> None:
    """The same work through one vLLM engine: each engine call scores several adapters together.

    The engine checks at start-up that its share of the GPU's memory is free: what training left
    in this process is released first. An engine that cannot start fails every (state, target)
    it was to score, recorded like any failure, and the study goes on.
    """
    from donors.evaluate.vllm_backend import VllmScorer

    states = [
        (unit.state, None if path is None else str(path), {target: test_items[target] for target in unit.targets})
        for unit, path in _verified_adapters(work, on_failure)
    ]
    pending = {(state, target) for state, _, items in states for target in items}
    try:
        free_device_memory()
        scorer = VllmScorer(
            model_name,
            chat_template=config.eval.chat_template,
            prompt_format=config.eval.prompt_format,
            lora_rank=config.lora.r,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            max_loras=config.eval.vllm.max_loras,
            max_model_len=config.eval.vllm.max_model_len,
            engine_args=vllm_engine_args(config),
        )
        dtype = dtype_name(pick_dtype(config.dtype))  # what VllmScorer gives the engine
        for state, target, result in scorer.score_adapters(states, on_items=on_items):
            pending.discard((state, target))
            on_result(state, result.computed_in(dtype))
    except Exception as error:  # noqa: BLE001 - an engine that fails (at start or in a call) fails the pairs it had not returned
        for state, target in sorted(pending, key=str):
            on_failure(state, target, error)
