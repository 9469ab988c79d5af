"""lm-evaluation-harness as a scoring backend, with adapters swapped in-process.

Our items become lm-eval tasks: per target, a JSON Lines file of its items and a task YAML
(``output_type: multiple_choice``, 0-shot, ``acc`` and ``acc_norm``), written to a private
temporary directory and read back through lm-eval's own ``TaskManager`` (local data, never
the hub). So every task of ours, the embedded ones included, runs through lm-eval's request
building, chat templating, target delimiter, batching, log-likelihoods and metrics.

The model object is wrapped once in lm-eval's ``HFLM``. The caller swaps PEFT adapters on
that object between calls, so no adapter is merged, saved or given a process of its own.
Per-item log-likelihoods come from lm-eval's logged samples and become the same
:class:`~donors.records.ItemPrediction` records as the native backend's.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from donors.evaluate import Key, TargetResult, prediction, summarize
from donors.tasks.item import Item, items_digest
from donors.tasks.prompts import PromptFormat, choice_strings, prompt_text

LM_EVAL_VERSION = "0.4.13"


def lm_eval_task_name(task: str, language: str) -> str:
    """A name lm-eval accepts (letters, digits, underscores) for one target."""
    return re.sub(r"\W", "_", f"donors_{task}_{language}")


def task_rows(items: Sequence[Item], prompt_format: PromptFormat) -> list[dict[str, Any]]:
    """One JSON object per item: the prompt before any chat template, the choices, the gold index."""
    return [
        {
            "id": item.id,
            "prompt": prompt_text(item, prompt_format),
            "choices": list(choice_strings(item, prompt_format)),
            "answer": item.answer_index,
        }
        for item in items
    ]


def task_config(name: str, data_file: Path, cache_dir: Path) -> dict[str, Any]:
    """An lm-eval multiple-choice task over a local JSON Lines file; the chat template is a run option."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir)},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": " ",
        "num_fewshot": 0,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


def write_task(directory: Path, task: str, language: str, items: Sequence[Item], prompt_format: PromptFormat) -> str:
    """Write one target as ``<name>.jsonl`` + ``<name>.yaml`` under ``directory``; return the task name."""
    name = lm_eval_task_name(task, language)
    directory.mkdir(parents=True, exist_ok=True)
    data_file = directory / f"{name}.jsonl"
    with data_file.open("w", encoding="utf-8") as f:
        for row in task_rows(items, prompt_format):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    config = task_config(name, data_file, directory / "hf_datasets_cache")
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return name


def _quiet_hflm():
    """``HFLM`` without its per-call progress bars (our progress bar counts items)."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

    return QuietHFLM


def _target_result(items: Sequence[Item], samples: list[dict], metrics: dict[str, Any], prompt_format: PromptFormat) -> TargetResult:
    """lm-eval's logged samples as our records, in the order of ``items``; the scores are lm-eval's own."""
    by_id = {sample["doc"]["id"]: sample for sample in samples}
    predictions = [prediction(item, [ll for ll, _ in by_id[item.id]["filtered_resps"]], prompt_format) for item in items]
    score = replace(summarize(predictions), accuracy=float(metrics["acc,none"]), accuracy_norm=float(metrics["acc_norm,none"]))
    return TargetResult(score, predictions)


class HarnessScorer:
    """The ``harness`` backend behind :class:`donors.evaluate.Scorer`.

    Task files are written once per distinct target and reused, as are lm-eval's loaded task
    objects, so scoring K adapters costs K evaluations, not K task builds.
    """

    def __init__(
        self, *, chat_template: bool, batch_size: int = 32, prompt_format: PromptFormat = "lettered", workdir: str | Path | None = None
    ):
        if str(batch_size).startswith("auto"):
            raise ValueError("use a fixed batch size: lm-eval's 'auto' probes for minutes on a CPU")
        self.chat_template = chat_template
        self.batch_size = int(batch_size)
        self.prompt_format = prompt_format
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="donors-lm-eval-")
            weakref.finalize(self, shutil.rmtree, workdir, True)
        self.workdir = Path(workdir)
        self._written: dict[str, str] = {}
        self._manager = None
        self._tasks: dict[str, Any] = {}
        self._lm = None
        self._wrapped = None
        logging.getLogger("lm_eval").setLevel(logging.ERROR)

    def task_names(self, targets: Mapping[Key, Sequence[Item]]) -> dict[Key, str]:
        """Write any target not written yet; its lm-eval task name per key."""
        names = {}
        for key, items in targets.items():
            if not items:
                raise ValueError(f"target {key} has no items to score")
            name = lm_eval_task_name(items[0].task, items[0].language)
            fingerprint = items_digest(items)
            if self._written.get(name) != fingerprint:
                write_task(self.workdir, items[0].task, items[0].language, items, self.prompt_format)
                self._written[name] = fingerprint
                self._tasks.pop(name, None)
                self._manager = None
            names[key] = name
        return names

    def _load(self, names: Sequence[str]) -> dict[str, Any]:
        from lm_eval.tasks import TaskManager

        if self._manager is None:
            self._manager = TaskManager(include_path=str(self.workdir), include_defaults=False)
        missing = [n for n in names if n not in self._tasks]
        if missing:
            self._tasks.update(self._manager.load(missing)["tasks"])
        return {"tasks": {n: self._tasks[n] for n in names}, "groups": {}, "group_map": {}}

    def _wrap(self, model, tokenizer):
        """One ``HFLM`` per model object: swapping an adapter on it needs no new wrapper.

        ``softmax_dtype=float32``: lm-eval's log-softmax over every position runs in fp32, not
        in the model's dtype. The logits it reads are still the model's own, though: under a
        bf16 model, rounded to bf16 (spaced 0.0625 at a logit of 10), where the native backend
        reads the candidates' logits in fp32 (:func:`donors.models.fp32_head_logits`). So the
        two backends agree in fp32 (log-likelihoods within 1e-3, the same answers,
        tests/test_harness_agreement.py); in bf16 a log-likelihood differs by at most the
        rounding of its logits to bf16, and the answers differ only where two choices' logits
        are that close: there lm-eval may see a tie (which goes to the first choice) and the
        native backend does not (tests/test_bf16.py measures it).
        """
        if self._wrapped is not model:
            import torch

            self._lm = _quiet_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size, softmax_dtype=torch.float32)
            self._wrapped = model
        return self._lm

    def score(
        self, model, tokenizer, targets: Mapping[Key, Sequence[Item]], *, model_name: str = "", on_batch=None
    ) -> dict[Key, TargetResult]:
        from lm_eval.evaluator import evaluate

        names = self.task_names(targets)
        results = evaluate(
            lm=self._wrap(model, tokenizer),
            task_dict=self._load(list(dict.fromkeys(names.values()))),
            bootstrap_iters=0,
            log_samples=True,
            apply_chat_template=self.chat_template,
        )
        out = {}
        for key, items in targets.items():
            name = names[key]
            out[key] = _target_result(items, results["samples"][name], results["results"][name], self.prompt_format)
            if on_batch:
                on_batch(len(items))
        return out
