"""Server configuration: one dataclass whose fields are start.sh's flags; install-time defaults from
model_info.json apply where a flag is not given."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from core.settings import DEVICES, DTYPES, QUANTIZATIONS
from llamacpp.quantize import GGUF_TYPES
from serving.engines.base import ServeConfigError
from serving.engines.registry import DEFAULT_ENGINE, ENGINE_NAMES, engine_help

BATCHING = ("auto", "on", "off")
DEFAULT_MAX_BODY_BYTES = 1_000_000


def _opt(help_text: str, default=MISSING, **extra):
    meta = {"help": help_text, **extra}
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


@dataclass
class ServeConfig:
    """Every option of start.sh."""

    model_dir: Path | None = _opt("Installed model directory (start.sh passes it).", None)
    port: int = _opt("Port to listen on (default 8000).", 8000)
    host: str = _opt("Address to bind (default 127.0.0.1); anything else exposes the model to the network: "
                     "use --api-key.",
                     "127.0.0.1")
    api_key: str | None = _opt("Require this key (Bearer token) on every route but /health (default: $LLM_API_KEY).",
                               None)
    dtype: str | None = _opt("Weights dtype (default: the install's choice, else auto).", None, choices=DTYPES)
    device: str | None = _opt("Device (default: the install's choice, else cuda > mps > cpu).", None, choices=DEVICES)
    quantization: str | None = _opt("Load the weights in 8-bit or 4-bit with bitsandbytes (CUDA only).", None,
                                    choices=QUANTIZATIONS)
    cpu_offload: bool = _opt("Keep layers that do not fit on the GPU in CPU memory.", False)
    max_concurrency: int = _opt("Requests generating at once (default: 32 with --batching, else 1); more wait in "
                                "a queue.", 0)
    batching: str = _opt("Continuous batching of concurrent requests (transformers engine): auto = on a CUDA GPU "
                         "(on the CPU it helps many clients and slows a lone one).", "auto", choices=BATCHING)
    engine: str = _opt(engine_help(), DEFAULT_ENGINE, choices=ENGINE_NAMES)
    gguf_quant: str | None = _opt("Type of the base model's GGUF served by --engine llama.cpp, made once and cached "
                                  "(default q4_k_m, or q4_1 for models whose widths are not multiples of 256; "
                                  "q8_0: closest to full precision).", None, choices=GGUF_TYPES)
    threads: int = _opt("CPU threads that compute (default: $OMP_NUM_THREADS, else one per physical core); on a "
                        "busy machine fewer are faster.", 0)
    chat: bool = _opt("Chat in this terminal instead of starting a server.", False)
    temperature: float = _opt("Sampling temperature of --chat (0 = always the most likely token).", 0.7)
    no_lora: bool = _opt("Serve the base model even if ./lora holds an adapter.", False)
    load_lora: Path | None = _opt("Serve this adapter directory instead of ./lora.", None)
    lora: list[str] = field(default_factory=list, metadata={
        "help": "Also serve the adapter in PATH under the model id NAME (repeatable); each is checked against the "
                "base model like ./lora. Requests pick it with \"model\": \"NAME\".",
        "metavar": "NAME=PATH", "action": "append"})
    max_body_bytes: int = _opt("Largest request body accepted, in bytes (a multimodal model's default is 28000000, "
                               "room for its images).", DEFAULT_MAX_BODY_BYTES)
    allowed_origins: str | None = _opt("Web pages (origins) allowed to call the API from a browser, comma-separated "
                                       "(https://app.example.com, https://*.example.com, or * for any); pages on "
                                       "localhost always are. Others get a 403.", None, metavar="ORIGINS")
    allow_remote_images: bool = _opt("Multimodal models: fetch http(s) image URLs in requests (default: refused; "
                                     "images come inline as data: URLs).", False)

    def validate(self) -> ServeConfig:
        if not 0 < self.port < 65536:
            raise ServeConfigError(f"--port must be between 1 and 65535, not {self.port}.")
        if self.max_concurrency < 0:
            raise ServeConfigError("--max-concurrency must be at least 1 (0: the default).")
        if self.batching == "on" and self.engine != "transformers":
            raise ServeConfigError(f"--batching on applies to --engine transformers; {self.engine} "
                                   f"{'batches by itself' if self.engine == 'vllm' else 'queues requests'}.")
        if not 0 <= self.temperature <= 2:
            raise ServeConfigError("--temperature must be between 0 and 2.")
        if self.no_lora and self.load_lora:
            raise ServeConfigError("--no-lora and --load-lora contradict each other; give one.")
        if self.model_dir is None:
            raise ServeConfigError("--model-dir is required (start.sh passes it).")
        self.named_adapters()
        self.origins()
        if self.threads < 0:
            raise ServeConfigError("--threads must be at least 1 (0: the default).")
        if self.gguf_quant and self.engine != "llama.cpp":
            raise ServeConfigError("--gguf-quant applies to --engine llama.cpp only.")
        if self.threads and self.engine == "vllm":
            raise ServeConfigError("--threads applies to the CPU engines (transformers, llama.cpp), not vllm.")
        if self.engine == "llama.cpp":
            given = [flag for flag, value in (("--dtype", self.dtype), ("--quantization", self.quantization),
                                              ("--cpu-offload", self.cpu_offload)) if value]
            if self.device not in (None, "auto", "cpu"):
                given.append("--device")
            if self.max_concurrency > 1:
                given.append("--max-concurrency")
            if given:
                raise ServeConfigError(f"{', '.join(given)} apply to --engine transformers; --engine llama.cpp serves "
                                       f"a GGUF (--gguf-quant) on the CPU, one request at a time.")
        return self

    def named_adapters(self) -> dict[str, Path]:
        """--lora NAME=PATH flags as {NAME: PATH}; ServeConfigError for a malformed or repeated NAME."""
        from serving.router import ADAPTER_NAME  # here: the router pulls in pydantic, which --help does not need

        named: dict[str, Path] = {}
        for item in self.lora:
            name, sep, path = item.partition("=")
            if not sep or not path:
                raise ServeConfigError(f"--lora {item}: expected NAME=PATH.")
            if not ADAPTER_NAME.match(name):
                raise ServeConfigError(f"--lora {item}: NAME must be letters, digits and ._:/@+- (up to 128).")
            if name in named:
                raise ServeConfigError(f"--lora {name} is given twice.")
            named[name] = Path(path).expanduser()
        return named

    def origins(self) -> tuple[str, ...]:
        """Every origin allowed to call the API (serving/origins.py); ServeConfigError for one that is not an
        origin."""
        from serving.origins import parse_origins

        try:
            return parse_origins(self.allowed_origins)
        except ValueError as exc:
            raise ServeConfigError(str(exc)) from exc

    def check_api_key(self) -> None:
        """HTTP headers carry ASCII: a key with other characters could never be matched, so refuse it now."""
        key = self.api_key
        if key is not None and not (key.isascii() and key.isprintable() and key.strip() == key):
            raise ServeConfigError("The API key (--api-key or LLM_API_KEY) must be printable ASCII without "
                                   "surrounding spaces: HTTP clients cannot send other characters in a header.")

    @property
    def loopback(self) -> bool:
        """Whether the server binds to this machine only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @functools.cached_property
    def model_info(self) -> dict:
        """model_info.json of the installed model ({} when unreadable); read once."""
        try:
            return json.loads((Path(self.model_dir) / "model_info.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def apply_install_defaults(self) -> ServeConfig:
        """Fill dtype/device/quantization from model_info.json where no flag was given."""
        defaults = self.model_info.get("defaults", {})
        self.dtype = self.dtype or defaults.get("dtype") or "auto"
        self.device = self.device or defaults.get("device") or "auto"
        self.quantization = self.quantization or defaults.get("quantization") or "none"
        self.api_key = self.api_key or os.environ.get("LLM_API_KEY") or None
        self.check_api_key()
        return self


def _argument_type(name: str, default):
    if isinstance(default, float | int):
        return type(default)
    return Path if name in ("model_dir", "load_lora") else str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="start.sh", description="Serve the installed model (with ./lora when present) on an OpenAI-compatible "
        "API at http://HOST:PORT/v1, with a chat page at http://HOST:PORT/.")
    for spec in fields(ServeConfig):
        flag = "--" + spec.name.replace("_", "-")
        kwargs = {"help": spec.metadata["help"], "dest": spec.name}
        if "metavar" in spec.metadata and spec.metadata.get("action") != "append":
            kwargs["metavar"] = spec.metadata["metavar"]
        if spec.type in ("bool",) or isinstance(spec.default, bool):
            parser.add_argument(flag, action="store_true", **kwargs)
            continue
        if spec.metadata.get("action") == "append":
            parser.add_argument(flag, action="append", default=[], metavar=spec.metadata["metavar"], **kwargs)
            continue
        kind = _argument_type(spec.name, spec.default)
        parser.add_argument(flag, type=kind, default=spec.default, choices=spec.metadata.get("choices"), **kwargs)
    return parser


def parse_config(argv: list[str] | None = None) -> ServeConfig:
    """ServeConfig from the command line, validated, with install-time defaults applied."""
    args = vars(build_parser().parse_args(argv))
    return ServeConfig(**args).validate().apply_install_defaults()
