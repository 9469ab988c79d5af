"""What differs on a GPU machine, exercised on the CPU with the device queries monkeypatched (issue 18)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from donors.config import config_from_dict
from donors.errors import DonorsError
from donors.execute import work
from donors.grid import Cell
from donors.jobs import StateWork, TrainJob
from donors.records import ModelState
from donors.train.lora import TrainResult

GRID = {"name": "gpu", "models": ["smollm2-135m"], "tasks": ["number_words"], "languages": ["en"], "seeds": [17]}


def config(**overrides):
    return config_from_dict({**GRID, **overrides})


class _TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)


def _fake_training(seen: dict, warn: str | None = None):
    def train_lora(model, tokenizer, items, **kwargs):
        seen["enabled"] = torch.are_deterministic_algorithms_enabled()
        seen["warn_only"] = torch.is_deterministic_algorithms_warn_only_enabled()
        seen["cublas"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if warn:
            import warnings

            warnings.warn(warn, UserWarning)
        Path(kwargs["output_dir"]).mkdir(parents=True)
        return TrainResult(("a",), (), (), None, 0.1, 1)

    return train_lora


@pytest.mark.parametrize(
    ("deterministic", "warn", "recorded"),
    [(True, None, "true"), (False, None, "false"), (True, "x does not have a deterministic implementation", "false")],
)
def test_training_on_a_gpu_is_deterministic_by_default_restored_after_and_recorded(tmp_path, monkeypatch, deterministic, warn, recorded):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(work, "_device_type", lambda model: "cuda")
    monkeypatch.setattr(work, "adapter_digest", lambda path: "0" * 64)
    seen: dict = {}
    monkeypatch.setattr(work, "train_lora", _fake_training(seen, warn))
    study = config(train={"deterministic": deterministic})
    job = TrainJob("smollm2-135m", Cell("number_words", "en"), 17)
    assert not torch.are_deterministic_algorithms_enabled()
    record = work.train_adapter(study, job, [], tmp_path, base=(_TinyLM(), None))
    assert seen["enabled"] is deterministic and seen["cublas"] == (":4096:8" if deterministic else None)
    assert seen["warn_only"] is deterministic  # an op without a deterministic kernel warns, it does not fail the run
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert record.versions["deterministic"] == recorded
    assert "torch" in record.versions


def test_training_on_the_cpu_is_recorded_deterministic_without_changing_torchs_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(work, "adapter_digest", lambda path: "0" * 64)
    seen: dict = {}
    monkeypatch.setattr(work, "train_lora", _fake_training(seen))
    job = TrainJob("smollm2-135m", Cell("number_words", "en"), 17)
    record = work.train_adapter(config(), job, [], tmp_path, base=(_TinyLM(), None))
    assert seen["enabled"] is False and record.versions["deterministic"] == "true"


def test_the_deterministic_switch_is_not_part_of_the_recipe():
    assert config().recipe_hash() == config(train={"deterministic": False}).recipe_hash()
    assert "deterministic" in config().model_dump()["train"]


# --- item 14: a GPU given to a CPU build of torch ---


@pytest.mark.parametrize("visible", ["0", "2,3"])
def test_a_worker_given_a_gpu_with_a_cpu_build_of_torch_fails_naming_the_fix(monkeypatch, visible):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(work.DeviceError, match=r"CPU build.*pip install torch==[0-9.]+ --index-url https://download.pytorch.org/whl/cu12"):
        work.check_worker_device()


def test_a_gpu_assigned_by_ray_counts_and_a_cuda_build_without_a_device_points_at_the_driver(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    with pytest.raises(work.DeviceError, match="nvidia-smi"):
        work.check_worker_device(ray_gpu_ids=[0])


@pytest.mark.parametrize("visible", [None, "", "-1"])
def test_a_worker_given_no_gpu_runs_on_the_cpu(monkeypatch, visible):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    work.check_worker_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    work.check_worker_device(ray_gpu_ids=[1])  # a GPU it can use


def test_warnings_logged_in_a_worker_are_collected_for_the_driver():
    with work.collect_warnings() as collected:
        logging.getLogger("donors.train.lora").warning("out of memory at step %d with micro-batch %d; retrying with %d", 3, 8, 4)
        logging.getLogger("donors.train.lora").info("not a warning")
    logging.getLogger("donors.train.lora").warning("after: not collected")
    assert len(collected) == 1 and collected[0].endswith("out of memory at step 3 with micro-batch 8; retrying with 4")


# --- item 10: the vLLM engine's options, and an engine that cannot start ---


def _fake_vllm(monkeypatch, seen: dict, error: Exception | None):
    """A stand-in vllm module: its engine records what it was given, and raises ``error`` at start-up."""
    import sys
    import types

    class LLM:
        def __init__(self, **kwargs):
            seen["engine"] = kwargs
            seen["cuda_freed"] = seen.get("empty_cache_calls", 0)
            if error:
                raise error

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams, vllm.TokensPrompt = LLM, object, object
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = object
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(work, "free_device_memory", lambda: seen.__setitem__("empty_cache_calls", seen.get("empty_cache_calls", 0) + 1))


def _vllm_work(folder: Path):
    """The base and one adapter (its files in ``folder``, no stored digest) on two targets."""
    (folder / "adapter_config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, folder / "adapter_model.safetensors")
    base = ModelState("smollm2-135m")
    adapter = ModelState("smollm2-135m", Cell("number_words", "en"), 17)
    targets = [Cell("number_words", "en"), Cell("number_words", "de")]
    return [StateWork(base, targets), StateWork(adapter, targets, str(folder))], {t: [] for t in targets}


def test_a_vllm_engine_that_cannot_start_fails_its_pairs_and_the_study_goes_on(monkeypatch, tmp_path):
    seen: dict = {}
    _fake_vllm(monkeypatch, seen, ValueError("Free memory on device (20.1/79.2 GiB) is less than desired GPU memory utilization"))
    study = config(eval={"backend": "vllm", "chat_template": False})
    work_list, items = _vllm_work(tmp_path)
    results, failures = [], []
    work.evaluate_states(
        study, "smollm2-135m", work_list, items, lambda s, r: results.append((s, r)), lambda s, t, e: failures.append((s, t, e))
    )
    assert results == [] and len(failures) == 4
    assert all(isinstance(e, ValueError) and "Free memory" in str(e) for _, _, e in failures)
    assert seen["cuda_freed"] == 1  # training's memory was released before the engine started


def test_the_vllm_options_of_the_config_reach_the_engine_and_unset_ones_leave_vllms_defaults(monkeypatch, tmp_path):
    seen: dict = {}
    _fake_vllm(monkeypatch, seen, RuntimeError("stop after start-up"))
    work_list, items = _vllm_work(tmp_path)
    options = {
        "gpu_memory_utilization": 0.55,
        "max_model_len": 2048,
        "enforce_eager": True,
        "max_loras": 4,
        "engine_args": {"swap_space": 2},
    }
    study = config(eval={"backend": "vllm", "chat_template": False, "vllm": options})
    work.evaluate_states(study, "smollm2-135m", work_list, items, lambda *a: None, lambda *a: None)
    engine = seen["engine"]
    assert (engine["gpu_memory_utilization"], engine["max_model_len"], engine["enforce_eager"], engine["max_loras"]) == (
        0.55,
        2048,
        True,
        4,
    )
    assert engine["swap_space"] == 2
    default = config(eval={"backend": "vllm", "chat_template": False})
    work.evaluate_states(default, "smollm2-135m", work_list, items, lambda *a: None, lambda *a: None)
    assert not {"gpu_memory_utilization", "enforce_eager", "max_num_seqs", "swap_space"} & set(seen["engine"])
    assert seen["engine"]["max_model_len"] == 4096 and seen["engine"]["max_loras"] == 8
    # The recipe: unchanged by options that change no score, changed by the prompt length.
    assert (
        default.recipe_hash()
        == config(eval={"backend": "vllm", "chat_template": False, "vllm": {"gpu_memory_utilization": 0.5}}).recipe_hash()
    )
    assert default.recipe_hash() != study.recipe_hash()
    assert "vllm" not in config().recipe()["eval"]


# --- item 6: the one-pass head loss on an accelerator ---


def test_the_head_loss_chunks_by_device_and_waits_for_the_device_once_not_per_chunk(monkeypatch):
    from donors.train import loss

    assert loss.chunk_rows_for(torch.device("cpu")) == 1024
    assert loss.chunk_rows_for(torch.device("cuda")) >= 32768  # a 262k head in a few matmuls, not 256 small ones
    # ... but a chunk stays small: at most 256 MiB at 4 bytes a weight on a 4096-wide head (not 1 GiB), never below a CPU's chunk.
    assert loss.chunk_rows_for(torch.device("cuda"), 4096) * 4096 * 4 <= 256 * 2**20
    assert loss.chunk_rows_for(torch.device("cuda"), 640) == 65536 and loss.chunk_rows_for(torch.device("cuda"), 10**6) == 1024
    head = torch.nn.Linear(32, 4096, bias=False).requires_grad_(False)
    hidden = torch.randn(6, 32, requires_grad=True)
    labels = torch.tensor([0, 17, 1023, 1024, 4095, 2000])
    expected = torch.nn.functional.cross_entropy(head(hidden), labels, reduction="sum")
    syncs = []
    for name in ("tolist", "item", "__bool__", "cpu"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: (syncs.append(_n), _o(self, *a, **k))[1])
    original_tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: (syncs.append("tensor"), original_tensor(*a, **k))[1])
    value = loss.linear_cross_entropy(hidden, head, labels, chunk_rows=64)  # 64 chunks
    monkeypatch.undo()
    assert syncs == ["__bool__"]  # the label check before the loop; nothing inside it
    assert torch.allclose(value, expected, rtol=1e-5)


def test_on_an_accelerator_a_few_answer_rows_take_the_plain_loss_and_many_the_one_pass(monkeypatch):
    """Measured on an H200: the plain loss is 2.5-3.6x faster up to 256 rows of a 262k head; the one pass saves 10 GiB at 4,096."""
    from donors.train import loss

    gpu = torch.device("cuda")
    assert not loss.one_pass_pays(gpu, 16, 262144) and not loss.one_pass_pays(gpu, 256, 262144)
    assert loss.one_pass_pays(gpu, 4096, 262144) and loss.one_pass_pays(torch.device("cpu"), 16, 262144)
    head = torch.nn.Linear(32, 4096, bias=False).requires_grad_(False)
    hidden, labels = torch.randn(6, 32), torch.tensor([0, 17, 1023, 1024, 4095, 2000])
    taken = []
    monkeypatch.setattr(loss, "one_pass_cross_entropy", lambda *a, **k: taken.append("one pass") or torch.zeros(()))
    loss.linear_cross_entropy(hidden, head, labels)
    monkeypatch.setattr(loss, "one_pass_pays", lambda device, rows, vocab: False)  # as a GPU decides for 6 rows
    plain = loss.linear_cross_entropy(hidden, head, labels)
    assert taken == ["one pass"]
    assert torch.allclose(plain, torch.nn.functional.cross_entropy(head(hidden), labels, reduction="sum"))


# --- item 9: executor local on a machine with several GPUs ---


class _FakeRayExecutor:
    runs: list = []

    def __init__(self, config, store, data, console):
        self.config = config

    def run(self):
        _FakeRayExecutor.runs.append(self.config)


def _local_executor(monkeypatch, n_gpus: int):
    import io

    from rich.console import Console

    from donors.execute import local

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n_gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n_gpus)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100")
    out = io.StringIO()
    executor = local.LocalExecutor(config(ray={"address": "auto"}), None, None, Console(file=out, width=400))
    monkeypatch.setattr(executor, "check_same_dtype", lambda: None)  # no store here: test_local_refuses_... covers it
    models: list = []
    monkeypatch.setattr(executor, "evaluate", lambda model, base_only=False: models.append(model))
    monkeypatch.setattr(executor, "train", lambda model: None)
    monkeypatch.setattr(executor, "warn_if_collapsed", lambda model: None)
    return executor, out, models


def test_local_with_several_gpus_runs_on_a_ray_cluster_of_this_machine_and_says_so(monkeypatch):
    pytest.importorskip("ray")
    from donors.execute import ray as ray_executor

    monkeypatch.setattr(ray_executor, "RayExecutor", _FakeRayExecutor)
    _FakeRayExecutor.runs = []
    executor, out, models = _local_executor(monkeypatch, 4)
    executor.run()
    (ran,) = _FakeRayExecutor.runs
    assert ran.ray.address is None and ran.ray.gpus_per_job == 1.0  # a local cluster, one job per GPU
    assert models == []  # nothing ran the single-device way
    assert "4 GPUs visible" in out.getvalue() and "Ray cluster on this machine" in out.getvalue()


@pytest.mark.parametrize(("n_gpus", "said"), [(1, "running on cuda:0 (NVIDIA H100)"), (0, "running on the CPU")])
def test_local_with_one_gpu_or_none_runs_in_this_process_and_says_where(monkeypatch, n_gpus, said):
    _FakeRayExecutor.runs = []
    executor, out, models = _local_executor(monkeypatch, n_gpus)
    executor.run()
    assert _FakeRayExecutor.runs == [] and models == ["smollm2-135m", "smollm2-135m"]
    assert said in out.getvalue()


def test_local_without_ray_on_several_gpus_says_only_one_is_used(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    executor, out, models = _local_executor(monkeypatch, 2)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    executor.run()
    assert models == ["smollm2-135m", "smollm2-135m"] and "only cuda:0 is used" in out.getvalue()


def test_local_refuses_a_gpu_it_cannot_use(monkeypatch):
    executor, out, models = _local_executor(monkeypatch, 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(work.DeviceError, match="CPU build"):
        executor.run()
    assert models == []


# --- benchmark: plan states that its GPU throughput is an assumption ---


def test_plan_states_the_measured_utilisation_points_to_the_benchmark_and_flags_host_bound_models():
    from donors.plan import plan

    assumptions = plan(config()).assumptions()
    (line,) = [a for a in assumptions if a.startswith("GPU-hours")]
    assert "H200" in line and "bench/gpu_throughput.py" in line and "989 TFLOP/s x 40% utilisation" in line
    assert (Path(__file__).resolve().parent.parent / "bench" / "gpu_throughput.py").is_file()
    (small,) = [a for a in assumptions if a.startswith("host-bound")]  # the embedded 135M model
    assert "smollm2-135m" in small and "13x" in small
    assert not [a for a in plan(config(), mfu=0.03).assumptions() if a.startswith("host-bound")]


# --- item 8: evaluation work cut so that several GPUs share a (model, seed) ---


def test_a_model_seeds_states_are_cut_into_chunks_each_ready_on_its_own_adapters():
    from donors.execute.ray import EVAL_STATES_PER_TASK, RayExecutor

    study = config(
        tasks=["number_words", "cldr_continent"],
        languages=["en", "de", "fr", "es", "it", "ja", "zh", "ru", "ar", "hi", "sw"],
        seeds=[17, 42],
    )
    units = RayExecutor(study, None, None)._eval_units()
    per_seed = {seed: [u for u in units if u.seed == seed] for seed in (17, 42)}
    assert [len(u.states) for u in per_seed[17]] == [12, 11] and [len(u.states) for u in per_seed[42]] == [11, 11]  # 23 and 22 states
    assert all(len(u.states) <= EVAL_STATES_PER_TASK for u in units)
    assert per_seed[17][0].states[0].is_base and sum(s.is_base for u in units for s in u.states) == 1
    assert sorted(s.state_id for u in units for s in u.states) == sorted({s.state_id for u in units for s in u.states})


@pytest.mark.parametrize("stored_in", ["scores", "adapters"])
def test_local_refuses_to_resume_a_model_in_another_dtype_than_its_stored_work(tmp_path, monkeypatch, stored_in):
    """A study made in bf16 on one GPU, resumed where `dtype: auto` means float32 (here: the CPU), stops before any work."""
    import io

    from rich.console import Console

    from donors.evaluate import target_result
    from donors.execute import local
    from donors.records import AdapterRecord, ItemPrediction
    from donors.store import ResultsStore

    def stored(store, dtype: str) -> None:
        if stored_in == "scores":
            predictions = [ItemPrediction("number_words", "en", "i0", 0, 0, (-0.1, -2.0))]
            store.add_target_result(ModelState("smollm2-135m"), target_result(predictions).computed_in(dtype))
        else:
            versions = {"torch": "2.13.0", "dtype": dtype}
            store.add_adapter(
                AdapterRecord(f"smollm2-135m|a|{dtype}", "smollm2-135m", "t", "en", 1, "p", "r", (), (), None, (), None, versions)
            )

    ran: list = []
    monkeypatch.setattr(local, "pending_eval_work", lambda *args: ["work left"])  # one target stored, the rest to do
    for dtype, refused in (("float32", False), ("bfloat16", True)):
        with ResultsStore(tmp_path / f"{dtype}-{stored_in}.sqlite") as store:
            stored(store, dtype)
            executor = local.LocalExecutor(config(), store, None, Console(file=io.StringIO(), width=400))
            monkeypatch.setattr(executor, "evaluate", lambda model, base_only=False: ran.append((dtype, model)))
            monkeypatch.setattr(executor, "train", lambda model: None)
            monkeypatch.setattr(executor, "warn_if_collapsed", lambda model: None)
            if refused:
                with pytest.raises(DonorsError, match="computed in bfloat16, and this machine would compute in float32") as caught:
                    executor.run()
                assert "new output_dir" in str(caught.value)
            else:
                executor.run()
    assert ran == [("float32", "smollm2-135m"), ("float32", "smollm2-135m")]  # the bf16 store was never worked on


def test_a_finished_model_in_another_dtype_is_not_refused(tmp_path):
    """A finished bf16 study rerun on a CPU (to rebuild its report, or beside a new model) computes nothing of that model."""
    from donors.evaluate import target_result
    from donors.execute import local
    from donors.jobs import train_jobs
    from donors.records import AdapterRecord, ItemPrediction
    from donors.store import ResultsStore

    finished = config()  # one model, one cell, one seed: the base and one adapted state, each on one target
    (job,) = train_jobs(finished)
    predictions = [ItemPrediction("number_words", "en", "i0", 0, 0, (-0.1, -2.0))]
    with ResultsStore(tmp_path / "r.sqlite") as store:
        record = AdapterRecord(job.job_id, job.model, "number_words", "en", 17, "p", "r", (), (), None, (), None, {"dtype": "bfloat16"})
        store.add_adapter(record)
        for state in (ModelState(job.model), ModelState(job.model, job.source, job.seed)):
            store.add_target_result(state, target_result(predictions).computed_in("bfloat16"))
        local.LocalExecutor(finished, store, None).check_same_dtype()  # nothing left to compute: nothing refused
        store.discard_adapter(job.job_id, "test: its state must be trained again")
        with pytest.raises(DonorsError, match="computed in bfloat16"):
            local.LocalExecutor(finished, store, None).check_same_dtype()


def test_ray_says_once_when_its_workers_compute_a_model_in_two_dtypes(tmp_path):
    """Ray workers resolve `dtype: auto` on their own GPUs; the driver says so as soon as the store holds two."""
    import io

    from rich.console import Console

    from donors.evaluate import target_result
    from donors.execute.ray import RayExecutor
    from donors.records import ItemPrediction
    from donors.store import ResultsStore

    out = io.StringIO()
    predictions = [ItemPrediction("number_words", "en", "i0", 0, 0, (-0.1, -2.0))]
    with ResultsStore(tmp_path / "r.sqlite") as store:
        executor = RayExecutor(config(), store, None, Console(file=out, width=400))
        store.add_target_result(ModelState("smollm2-135m"), target_result(predictions).computed_in("bfloat16"))
        executor.say_if_mixed_dtypes("smollm2-135m")
        assert out.getvalue() == ""
        for seed in (1, 2):
            state = ModelState("smollm2-135m", Cell("number_words", "en"), seed)
            store.add_target_result(state, target_result(predictions).computed_in("float32"))
            executor.say_if_mixed_dtypes("smollm2-135m")
    assert out.getvalue().count("smollm2-135m is being computed in bfloat16 and float32") == 1
