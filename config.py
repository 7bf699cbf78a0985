"""config.py: the run's setup, shared by every script.

One dataclass config per script, overridden from the command line as `--key=value` (nanoGPT style):
unknown keys are refused with a suggestion, values are type-checked, closed sets of choices are checked.
A config may hold another (`group`): its options are set as `--group.key=value`, e.g. `--moderator.steps=300`.
Also here: picking the device once, seeding everything from one seed, and the run record that is saved
next to every output (resolved config, seed, package versions, hardware).

Used as:  cfg = parse(TrainConfig, sys.argv[1:])   or   cli(TrainConfig, main)
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import platform
import random
import shutil
import sys
import threading
import types
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A bad command-line option: the message says what was wrong and how to fix it."""


def option(default, help: str, choices: tuple | None = None):
    """A config field with a help line and, optionally, a closed set of allowed values."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def group(cls, help: str, **defaults):
    """A config field that holds another config: its options are set as --<field>.<option>=value."""
    return dataclasses.field(default_factory=lambda: cls(**defaults), metadata={"help": help, "group": True})


DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclasses.dataclass
class RunConfig:
    """The options every script's config holds (its config subclasses this one)."""
    seed: int = option(0, "one seed for everything the script draws: data, initialisation, sampling, training")
    device: str = option("auto", "auto picks cuda, then mps, then cpu", DEVICES)


def _field_type(cls, f) -> type:
    hints = typing.get_type_hints(cls)
    t = hints[f.name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if typing.get_origin(t) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]  # Optional[X] -> X
    return t


def _options(cls, prefix: str = "") -> dict:
    """Every settable option of cls as {"name" or "group.name": (its class, its field)}."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("group"):
            out |= _options(_field_type(cls, f), f"{prefix}{f.name}.")
        else:
            out[prefix + f.name] = (cls, f)
    return out


def _convert(cls, f, key: str, text: str):
    t = _field_type(cls, f)
    if t is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{key} expects true or false, got {text!r}")
    if t in (int, float):
        try:
            return t(text)
        except ValueError:
            raise ConfigError(f"--{key} expects {t.__name__}, got {text!r}") from None
    if t is str:
        return text
    raise ConfigError(f"--{key} has type {t} that the command line cannot set")


def help_text(cls) -> str:
    lines = [f"options of {cls.__name__} (use --key=value):"]
    defaults = cls()
    for key, (owner, f) in _options(cls).items():
        ch = f.metadata.get("choices")
        extra = f" choices: {', '.join(map(str, ch))}" if ch else ""
        default = _default(defaults, key)
        lines.append(f"  --{key}={default!r:<14} {f.metadata.get('help', '')}{extra}")
    return "\n".join(lines)


def _default(obj, key: str):
    """The value of option `key` ("name" or "group.name") in a config."""
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _build(cls, values: dict):
    """cls with `values` ({"name" or "group.name": value}) applied over its defaults, a group's over the defaults
    its parent gives it (groups hold plain options, one level deep)."""
    kw = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("group"):
            inner = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f.name + ".")}
            if inner:
                kw[f.name] = dataclasses.replace(f.default_factory(), **inner)
        elif f.name in values:
            kw[f.name] = values[f.name]
    return cls(**kw)


def build(cls, values: dict):
    """cls from {"option" or "group.option": value}, checked as the command line is: the way to set a grouped
    option in code, e.g. build(NFTConfig, {"steps": 2, "moderator.kind": "off"})."""
    options = _options(cls)
    unknown = [k for k in values if k not in options]
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} for {cls.__name__}")
    cfg = _build(cls, values)
    check(cfg)
    return cfg


def flatten(record: dict, prefix: str = "") -> dict:
    """A config as a dict (dataclasses.asdict), its groups spelled out: {"steps": 2, "moderator.kind": "off"}."""
    out = {}
    for k, v in record.items():
        out |= flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
    return out


def parse(cls, argv: list[str]):
    """Build `cls()` and apply `--key=value` overrides from argv. Raises ConfigError on any bad option."""
    options = _options(cls)
    groups = {f.name: _field_type(cls, f) for f in dataclasses.fields(cls) if f.metadata.get("group")}
    values = {}
    for arg in argv:
        flag = options.get(arg[2:].replace("-", "_")) if arg.startswith("--") and "=" not in arg else None
        if flag is not None and _field_type(*flag) is bool:
            arg += "=true"  # a bare --flag switches a true/false option on
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"options look like --key=value (or a bare --flag for a true/false option), "
                              f"got {arg!r}. Try --help.")
        key, text = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        if key in groups:
            first = dataclasses.fields(groups[key])[0].name
            raise ConfigError(f"--{key} is a group of options, set one of them: e.g. --{key}.{first}={text}. "
                              "Try --help for the list.")
        if key not in options:
            near = difflib.get_close_matches(key, options, n=1)
            hint = f" Did you mean --{near[0]}?" if near else " Try --help for the list."
            raise ConfigError(f"unknown option --{key} for {cls.__name__}.{hint}")
        values[key] = _convert(*options[key], key, text)
    cfg = _build(cls, values)
    check(cfg)
    return cfg


def check(cfg, prefix: str = "") -> None:
    """Check types and choices of a config built in code (tests, notebooks) as strictly as the CLI does."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        t = _field_type(type(cfg), f)
        ok = isinstance(v, t) and not (t is int and isinstance(v, bool))
        if t is float and isinstance(v, int) and not isinstance(v, bool):
            ok = True
        if v is None and f.default is None:
            ok = True
        if not ok:
            raise ConfigError(f"{prefix}{f.name} must be {t.__name__}, got {v!r} ({type(v).__name__})")
        if f.metadata.get("group"):
            check(v, f"{prefix}{f.name}.")
        ch = f.metadata.get("choices")
        if ch and v not in ch:
            raise ConfigError(f"--{prefix}{f.name}={v} is not allowed; choose one of: {', '.join(map(str, ch))}")


def cli(cls, main) -> None:
    """Entry point of a script: parse sys.argv into `cls`, print it, run main(cfg); bad options exit 2."""
    argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print((main.__doc__ or "").strip() + "\n\n" + help_text(cls))
        return
    try:
        cfg = parse(cls, argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(dataclasses.asdict(cfg), indent=1))
    main(cfg)


# ---------------------------------------------------------------------------------------------------------
# the memory savers the defence's scripts share (nft_train.py, moderator.py)
DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclasses.dataclass
class MemoryConfig:
    """Memory savers for real models on one GPU (README, "Using real Stable Diffusion"); off in the pocket world."""
    frozen_dtype: str = option("auto", "dtype of the frozen base parts (distillation UNet, VAE, text encoder, the "
                               "moderator's original decoder): auto = float16 on cuda, float32 elsewhere", DTYPES)
    gradient_checkpointing: bool = option(False, "recompute UNet (and moderator decoder) activations in backward")
    grad_accum: int = option(1, "micro-batches of --batch per outer update of the min-max loop")
    simulated_copy: str = option("deepcopy", "step 3: deepcopy adapts a copy of the UNet (two trainable UNets in "
                                 "memory); inplace sets the weights and gradients aside on the CPU, adapts the UNet "
                                 "itself and restores it (same result, one UNet)", ("deepcopy", "inplace"))

    def __post_init__(self):
        if isinstance(self.grad_accum, int) and self.grad_accum < 1:
            raise ConfigError(f"--memory.grad_accum must be at least 1, got {self.grad_accum}")


# ---------------------------------------------------------------------------------------------------------
# device, seed and run record
def pick_device(name: str = "auto"):
    """'auto' picks cuda, then mps, then cpu; chosen once per run and passed explicitly."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device=cuda but no CUDA GPU is visible; use --device=auto or --device=cpu")
    return torch.device(name)


def pick_dtype(name: str, device):
    """The dtype of the frozen parts (the base UNet used for distillation, frozen VAE and text encoder).

    'auto' is float16 on cuda (half the memory, and SD v1 runs in fp16 routinely) and float32 elsewhere: CPU
    float16 is slow, and the pocket world's measured numbers are float32. Trained weights always stay float32.
    """
    import torch

    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def wait_for(device) -> None:
    """Wait for the device's queued work before reading the clock (GPU work is asynchronous; a no-op on CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_record(cfg) -> dict:
    """What a reader needs to trust a number: the resolved config, the seed, versions and hardware."""
    import diffusers
    import numpy
    import torch
    import transformers

    return {
        "config": dataclasses.asdict(cfg),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                     "numpy": numpy.__version__},
        "hardware": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }


@contextlib.contextmanager
def atomic(path, replace: bool = True):
    """Write a file or a folder atomically: yields a temporary path beside `path` to write it under, then moves
    it into place in one rename, so a crash mid-write never leaves a half-written output behind.

    A folder that is already there is swapped out and removed after the rename. replace=False keeps what is
    there instead (another process got there first) and drops the new copy. The temporary name ends like
    `path` (PIL picks the image format from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp{os.getpid()}-{threading.get_ident()}.{path.name}")  # one per writer
    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    if path.exists() and not replace:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    elif tmp.is_dir() and path.exists():
        old = path.with_name(f".old{os.getpid()}-{threading.get_ident()}.{path.name}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def write_json(path, obj) -> None:
    """Write JSON atomically (atomic)."""
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))
