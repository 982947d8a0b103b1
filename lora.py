"""LoRA: low-rank adapters on a frozen base model, written here (no peft), saved in peft's layout.

Each chosen linear layer W of the base becomes

    y = W x + (alpha / r) · B A x        A: (r, in), random;  B: (out, r), zeros;  W frozen

so at step 0 an adapter changes nothing (B = 0), and only A and B are trained: r · (in + out)
numbers per layer instead of in · out. The three agents of CoMAM are three adapter sets on ONE
frozen base: `share_frozen` gives each agent its own module tree whose frozen tensors are the base's
(no copy), and `add_adapters` puts fresh adapters on it. The KL reference of a LoRA policy is the
policy the run started from, at no extra copy of the model: for fresh adapters its base with the
adapters switched off (`disabled`), for a LoRA warm start the saved adapters again on the same base
(`copy_adapters`; runs.reference_policies). Sampling (no gradient) folds each adapter into its weight
for the duration of one call (`merged_for_sampling`): one matrix product per layer instead of three.

Which layers (`TARGETS`, --lora-targets): "all" (default) = the attention projections q, k, v, o and
the MLP projections gate, up, down of every block; "attention" or "mlp" alone; or a comma list of
module names. All linear layers by default because adapters on the MLP matter as much as on the
attention (attention-only LoRA learns less per parameter in published LoRA-vs-full comparisons), and
on a 135M model all seven projections at rank 16 are still only ~3.6% of the parameters.

On disk (`save_adapters`), peft's layout, so that a user who has peft can load our adapters onto the
base with `PeftModel.from_pretrained(base, folder)`:
    adapter_config.json         {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": [...],
                                 "base_model_name_or_path": "smollm2", ...}
    adapter_model.safetensors   "base_model.model.<module path>.lora_A.weight" (r, in)
                                "base_model.model.<module path>.lora_B.weight" (out, r)
`base_model_name_or_path` is what `models.load_policy` takes: "smollm2" (the GGUF model of the
optional extra), "tiny", or a folder. `merged` folds B A into W: a plain model for anyone who wants one.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cli import InputError, autocast_enabled

TARGETS = {"attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
           "mlp": ("gate_proj", "up_proj", "down_proj")}
TARGETS["all"] = TARGETS["attention"] + TARGETS["mlp"]
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
BASE = "adapter_base.json"  # ours, beside peft's files: the identity of the base the adapters were trained on
PREFIX = "base_model.model."  # peft's key prefix: the PeftModel wraps a LoraModel that wraps the base


@dataclass
class LoRAConfig:
    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = TARGETS["all"]


def target_names(spec: str) -> tuple[str, ...]:
    """--lora-targets: "all" | "attention" | "mlp" | a comma list of module names ("q_proj,v_proj")."""
    names = TARGETS.get(spec) or tuple(n.strip() for n in spec.split(",") if n.strip())
    if not names:
        raise InputError(f"--lora-targets must be all, attention, mlp or module names, got {spec!r}")
    return names


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a low-rank update: base(x) + (alpha / r) · B(A(x)).

    Worked example, in = 3, out = 2, r = 1, alpha = 2 (scaling 2): with A = [[1, 0, 1]] and
    B = [[0.5], [0]], x = [1, 2, 3] adds 2 · B A x = 2 · [0.5 · 4, 0] = [4, 0] to W x."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        kw = dict(bias=False, device=base.weight.device, dtype=torch.float32)  # adapters stay float32
        self.lora_A = nn.Linear(base.in_features, rank, **kw)  # weight (r, in)
        self.lora_B = nn.Linear(rank, base.out_features, **kw)  # weight (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as nn.Linear (and peft) initialise
        nn.init.zeros_(self.lora_B.weight)  # B = 0: the adapted model starts equal to the base
        self.scaling = alpha / rank
        self.enabled = True
        self.merged_weight: torch.Tensor | None = None  # W + (alpha / r) B A, inside merged_for_sampling only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged_weight is not None and self.enabled and not torch.is_grad_enabled():
            return nn.functional.linear(x, self.merged_weight, self.base.bias)  # (..., out): one product
        out = self.base(x)  # (..., out)
        if not self.enabled:
            return out
        return out + self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype))).to(out.dtype) * self.scaling

    def delta(self) -> torch.Tensor:
        """The update this adapter adds to W: (alpha / r) · B A, shape (out, in)."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling


def adapters(model: nn.Module) -> dict[str, LoRALinear]:
    """module path -> adapter, for every adapted layer of `model` (empty: not a LoRA model)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def share_frozen(model: nn.Module) -> nn.Module:
    """A copy of `model` whose frozen parameters ARE the original's tensors (only the module tree,
    buffers and trainable parameters are copied): a second agent on the same base costs no memory."""
    memo = {id(p): p for p in model.parameters() if not p.requires_grad}
    return copy.deepcopy(model, memo)


def add_adapters(model: nn.Module, config: LoRAConfig, source: str = "--lora-targets") -> nn.Module:
    """Freeze every parameter of `model` and wrap each nn.Linear named in config.targets with a
    LoRALinear (in place). Returns the model. An unknown target name is an InputError listing the
    names that exist, naming `source` (the flag, or the adapter config that gave the names)."""
    model.requires_grad_(False)
    chosen = [(name, m) for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in config.targets]
    if not chosen:
        found = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise InputError(f"{source} {','.join(config.targets)}: no such linear layer in this model "
                         f"(it has: {', '.join(found)})")
    for name, linear in chosen:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                LoRALinear(linear, config.rank, config.alpha))
    return model


@contextlib.contextmanager
def disabled(model: nn.Module):
    """`with disabled(model):` the base model alone (every adapter off), e.g. as the KL reference."""
    layers = adapters(model).values()
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


@contextlib.contextmanager
def merged_for_sampling(model: nn.Module):
    """`with merged_for_sampling(model):` every adapter computes W x + (alpha / r) B A x as ONE product
    with the merged weight W + (alpha / r) B A (computed on entry from the adapters as they are now,
    dropped on exit), wherever no gradient is recorded. Decoding one token is bound by the number of
    operations, not by arithmetic, so this makes sampling faster (docs/speed.md); the result equals the
    separate products up to float rounding (tested). Not under bf16 autocast: there the merged
    weight would be rounded to bf16 and lose the adapters' small update, so they stay separate."""
    layers = list(adapters(model).values())
    device = next(model.parameters()).device.type
    if any(m.base.weight.dtype != torch.float32 for m in layers) or autocast_enabled(device):
        layers = []
    with torch.no_grad():
        for m in layers:
            m.merged_weight = m.base.weight + m.delta()  # (out, in)
    try:
        yield model
    finally:
        for m in layers:
            m.merged_weight = None


def merged(model: nn.Module) -> nn.Module:
    """A plain copy of `model` with every adapter folded into its base weight, W + (alpha / r) B A, and
    the LoRALinear wrappers gone: the same function, saved by save_pretrained as an ordinary model."""
    plain = copy.deepcopy(model)
    for name, m in adapters(plain).items():
        with torch.no_grad():
            m.base.weight += m.delta().to(m.base.weight.dtype)
        parent, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent) if parent else plain, child, m.base)
    plain.requires_grad_(True)
    return plain


# ======================================================================== peft's on-disk layout

def config_of(model: nn.Module) -> LoRAConfig:
    layers = list(adapters(model).values())
    rank = layers[0].lora_A.out_features
    targets = tuple(sorted({name.rsplit(".", 1)[-1] for name in adapters(model)}))
    return LoRAConfig(rank, layers[0].scaling * rank, targets)


def save_adapters(model: nn.Module, folder: Path, base: str, base_id: str | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors of `model`'s adapters, in peft's layout, and
    adapter_base.json: the base's name and `base_id`, the identity of its weights (models.weights_identity),
    checked whenever the adapters are loaded again (a base rebuilt in place since is an error)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config_of(model)
    tensors = {}
    for name, m in adapters(model).items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach().float().cpu().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach().float().cpu().contiguous()
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
        "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": 0.0, "target_modules": list(cfg.targets),
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None}, indent=2))
    (folder / BASE).write_text(json.dumps({"base_model_name_or_path": base, "weights_sha1": base_id}, indent=2))


def read_base_id(folder: Path) -> str | None:
    """The identity of the base the adapters in `folder` were trained on (None: not recorded, e.g.
    adapters made by peft)."""
    path = Path(folder) / BASE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        base_id = raw["weights_sha1"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a record of the adapters' base ({type(e).__name__}: {e})") from None
    if base_id is not None and not isinstance(base_id, str):
        raise InputError(f"{path}: field 'weights_sha1' must be a string, got {base_id!r}")
    return base_id


def check_config(folder: Path, expected: LoRAConfig, why: str) -> None:
    """The adapters in `folder` are those `expected` describes (the run's flags, or the adapters it
    started from): rank, alpha and target modules, each mismatch an InputError naming the field."""
    cfg, _ = read_config(folder)
    path = Path(folder) / CONFIG
    for field, saved, want in (("r", cfg.rank, expected.rank), ("lora_alpha", cfg.alpha, expected.alpha)):
        if not math.isclose(saved, want, rel_tol=1e-6):
            raise InputError(f"{path}: {field} {saved:g}, but {why} {want:g}; the adapter config was edited or "
                             "belongs to other adapters")
    if not set(cfg.targets) <= set(expected.targets):
        raise InputError(f"{path}: target_modules {','.join(cfg.targets)}, but {why} "
                         f"{','.join(expected.targets)}; the adapter config was edited or belongs to other adapters")


def is_adapter_folder(folder: Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def read_config(folder: Path) -> tuple[LoRAConfig, str]:
    """(the adapters' LoRAConfig, their base model's name) from adapter_config.json."""
    path = Path(folder) / CONFIG
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        cfg = LoRAConfig(int(raw["r"]), float(raw["lora_alpha"]), tuple(raw["target_modules"]))
        base = str(raw["base_model_name_or_path"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: not a LoRA adapter config ({type(e).__name__}: {e})") from None
    if raw.get("peft_type", "LORA") != "LORA" or cfg.rank < 1:
        raise InputError(f"{path}: only LoRA adapters of rank >= 1 are supported")
    if not math.isfinite(cfg.alpha) or cfg.alpha <= 0 or not cfg.targets or \
            not all(isinstance(t, str) and t for t in cfg.targets):
        raise InputError(f"{path}: lora_alpha must be a finite number > 0 and target_modules a list of module names")
    for key in ("use_rslora", "use_dora"):  # another scaling or another update: refused, not silently read as LoRA
        if raw.get(key):
            raise InputError(f"{path}: {key} is true; only plain LoRA (scaling alpha / r) is supported here")
    if raw.get("bias", "none") != "none" or raw.get("modules_to_save"):
        raise InputError(f"{path}: bias or modules_to_save adapters are not supported here (only lora_A / lora_B)")
    return cfg, base


def load_adapters(model: nn.Module, folder: Path) -> nn.Module:
    """Put the adapters saved in `folder` on `model` (its frozen base; in place). Every adapted layer
    must be in the file with the shapes of this base: a mismatch is an InputError naming the file."""
    cfg, _ = read_config(folder)
    return copy_adapters(add_adapters(model, cfg, f"{Path(folder) / CONFIG}: target_modules"), folder)


def copy_adapters(model: nn.Module, folder: Path) -> nn.Module:
    """Set the adapters already on `model` to those saved in `folder` (in place), e.g. a warm start's
    adapters on a copy of a policy that has trained since (the KL reference, runs.reference_policies).
    The same checks as load_adapters."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise InputError(f"{path}: cannot read the adapters ({type(e).__name__}: {e})") from None
    expected = {f"{PREFIX}{name}.lora_{x}.weight": getattr(m, f"lora_{x}").weight
                for name, m in adapters(model).items() for x in "AB"}
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise InputError(f"{path}: adapters do not fit this base model (missing {missing[:2]}, unexpected {extra[:2]})")
    for key, param in expected.items():
        if tensors[key].shape != param.shape:
            raise InputError(f"{path}: {key} has shape {tuple(tensors[key].shape)}, this base needs {tuple(param.shape)}")
        if not torch.isfinite(tensors[key]).all():
            raise InputError(f"{path}: {key} holds non-finite values (NaN or inf); the adapters are damaged")
        with torch.no_grad():
            param.copy_(tensors[key])
    return model
