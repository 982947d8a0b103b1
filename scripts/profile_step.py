"""Profile one CoMAM training step of a real model, phase by phase, in float32 and bfloat16 side by side.

    python scripts/profile_step.py                                   # SmolLM2 warm start, Q 4 x G 4
    python scripts/profile_step.py --queries 2 --group-size 8 --context-sessions 8 --kl-beta 0.05
    python scripts/profile_step.py --model tiny --queries 8 --group-size 8
    python scripts/profile_step.py --configs float32:plain,float32:full,bfloat16:full
    python scripts/profile_step.py --configs float32:full --decode-steps 12   # + LoRA merged vs separate

One step is exactly what train.py's `train_step` does (rollout -> rewards -> credit -> update), on the
same queries with the same sampling seed in every configuration. A configuration is
`precision:sharing`: precision float32 | bfloat16 (autocast; weights stay float32), sharing
plain (every prompt computed in full) | full (each shared prompt prefix computed once, `sharing.py`).
For each it prints, per phase,

    tokens    prefill: prompt tokens forwarded; decode: rows x new tokens; update / reference: rows x
              (prompt + completion) tokens the plain path would forward, and those actually forwarded
    seconds   wall time of the phase
    GFLOP/s   achieved: the phase's matrix arithmetic / its seconds

and, first, this machine's matmul peak in float32 and bfloat16 at the model's shapes. FLOPs are counted
from the shapes of every forward (see `flops_of_forward`): 2 x (non-embedding weights) per token, plus
attention (4 x layers x heads x head_dim x keys per query token), plus the language-model head where
it runs; the backward of a frozen base with LoRA adapters is counted as 1 x its forward (gradients of
the activations only), of full fine-tuning 2 x. Prints a Markdown table and writes --out (JSON).
"""
from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's modules

import agents  # noqa: E402
import comam  # noqa: E402
import experiments  # noqa: E402
import lora  # noqa: E402
import models  # noqa: E402
import runs  # noqa: E402
import sharing  # noqa: E402
import train  # noqa: E402
from cli import autocast, check, command, cpu_has_bf16, seed_everything  # noqa: E402


@dataclass
class Args:
    model: str = "checkpoints/smollm2-lora-warmstart"
    """policy of every agent (a LoRA warm start, smollm2, tiny, or a local folder)"""
    queries: int = 4
    """queries in the step (Q)"""
    group_size: int = 4
    """trajectories per query (G)"""
    configs: str = "float32:plain,float32:full,bfloat16:full"
    """comma list of precision:sharing to run, each on the same queries and sampling seed"""
    context_sessions: int = 0
    """as train.py --context-sessions (the fifth round used 8)"""
    kl_beta: float = 0.0
    """as train.py --kl-beta: > 0 adds the reference pass"""
    retrieval_needs_answer: bool = False
    """as train.py --retrieval-needs-answer"""
    extraction_alpha: float = 0.8
    """as train.py --extraction-alpha"""
    micro_batch: int = 64
    """as train.py --micro-batch"""
    step: int = 0
    """which training step's queries and seed (train.batch_at)"""
    warmup: bool = True
    """run one untimed step first (the first forward of a process pays one-off costs)"""
    seed: int = 1
    """as train.py --seed"""
    decode_steps: int = 0
    """also time this many decoding steps of all Q x G retrieval prompts, LoRA adapters merged into their weights and separate (0 = no)"""
    out: str = ""
    """write the results as JSON here (empty: print only)"""


# ======================================================================== counting: tokens and FLOPs per forward

class Meter:
    """Seconds, tokens and FLOPs per phase. A phase is entered with `meter.phase(name)`; the innermost
    one owns the time and the forwards inside it (the update's reference pass runs inside the update)."""

    def __init__(self):
        self.stack: list[str] = []
        self.seconds: dict[str, float] = {}
        self.tokens: dict[str, int] = {}
        self.flops: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        outer = self.stack[-1] if self.stack else None
        self.stack.append(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.stack.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + dt
            if outer is not None:  # the outer phase's own time excludes this one
                self.seconds[outer] = self.seconds.get(outer, 0.0) - dt

    def count(self, tokens: int, flops: float) -> None:
        name = self.stack[-1] if self.stack else "other"
        self.tokens[name] = self.tokens.get(name, 0) + tokens
        self.flops[name] = self.flops.get(name, 0.0) + flops


def model_shapes(model) -> dict:
    """What the FLOP count needs: non-embedding weights per token, layers, attention width, head size."""
    cfg = model.config
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    tied = head.data_ptr() == emb.data_ptr()
    body = total - emb.numel() - (0 if tied else head.numel())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {"body": body, "layers": cfg.num_hidden_layers, "attn": cfg.num_attention_heads * head_dim,
            "hidden": cfg.hidden_size, "vocab": head.shape[0]}


def flops_of_forward(shapes: dict, rows: int, new: int, keys: int) -> float:
    """Matrix FLOPs of one forward of the decoder body over rows x new query tokens attending to `keys`
    keys each (cache + new): 2 x weights per token, + QK^T and AV (2 x 2 x attn width per key)."""
    tokens = rows * new
    return 2.0 * shapes["body"] * tokens + 4.0 * shapes["layers"] * shapes["attn"] * tokens * keys


def instrument(model, meter: Meter, shapes: dict) -> list:
    """Forward hooks on the decoder body (tokens and FLOPs of every forward) and on the head."""
    body, head = model.base_model, model.get_output_embeddings()
    if lora.adapters(model):  # a LoRA model wraps the transformers model; its body is one level down
        body = getattr(body, "model", body)

    def on_body(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        rows, new = ids.shape
        keys = mask.shape[1] if mask is not None else new
        real = int(mask[:, -new:].sum()) if mask is not None else rows * new
        meter.count(real, flops_of_forward(shapes, rows, new, keys))

    def on_head(module, args, output):
        n = args[0].numel() // shapes["hidden"]
        meter.count(0, 2.0 * shapes["hidden"] * shapes["vocab"] * n)

    return [body.register_forward_hook(on_body, with_kwargs=True), head.register_forward_hook(on_head)]


def matmul_peak(shapes: dict, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """GFLOP/s of this machine's matmul at the model's MLP shape (a 512-token block)."""
    a = torch.randn(512, shapes["hidden"], dtype=dtype)
    b = torch.randn(shapes["hidden"], 3 * shapes["hidden"], dtype=dtype)
    for _ in range(3):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1] * n / (time.perf_counter() - t0) / 1e9


# ======================================================================== one step, phase by phase

@contextlib.contextmanager
def phases(meter: Meter):
    """Route the model layer's calls through `meter` (this script only: the training code is unchanged)."""
    patched = {
        (models, "prefill"): "prefill", (sharing, "prefill"): "prefill", (models, "sample"): "decode",
        (models, "policy_logprobs"): "update forward", (models, "reference_logprobs"): "reference",
    }
    originals = {key: getattr(*key) for key in patched}

    def timed(fn, name):
        def wrapper(*a, **k):
            if meter.stack and meter.stack[-1] == "reference":  # the reference pass calls policy_logprobs
                return fn(*a, **k)
            with meter.phase(name):
                return fn(*a, **k)
        return wrapper

    backward = torch.Tensor.backward
    for (mod, attr), name in patched.items():
        setattr(mod, attr, timed(originals[(mod, attr)], name))
    torch.Tensor.backward = timed(backward, "update backward")
    try:
        yield
    finally:
        for (mod, attr), fn in originals.items():
            setattr(mod, attr, fn)
        torch.Tensor.backward = backward


def one_step(policies, opts, queries, args: Args, budgets, max_new, precision: str, seed: int) -> dict:
    targs = train.Args(model=args.model, queries=args.queries, group_size=args.group_size,
                       context_sessions=args.context_sessions, kl_beta=args.kl_beta,
                       retrieval_needs_answer=args.retrieval_needs_answer, extraction_alpha=args.extraction_alpha,
                       micro_batch=args.micro_batch, precision=precision)
    gen = torch.Generator().manual_seed(seed)
    for p in runs.unique(policies).values():
        p.model.eval()
    with autocast("cpu", precision):
        if experiments.active(targs):
            groups, _ = experiments.rollout(policies, queries, targs, budgets, max_new, gen)
        else:
            groups = comam.rollout(policies, queries, args.group_size, budgets, max_new, targs.temperature, gen)
    batches, _ = train.credit_step(groups, targs)
    refs = runs.reference_policies(targs, policies, "cpu")
    train.update_policies(policies, opts, batches, list(agents.ROLES), targs, "cpu", refs)
    return {"global_reward": sum(t.global_reward for g in groups for t in g) / sum(map(len, groups)),
            "completion_tokens": {r: sum(len(c) for _, c, _ in b) for r, b in batches.items()}}


def run_config(args: Args, precision: str, share: str, train_set) -> dict:
    seed_everything(args.seed)
    targs = train.Args(model=args.model, lora_rank=-1, share_prompts=share == "full")
    policies = runs.load_run_policies(runs.resolve_lora_rank(targs), "cpu")
    opts = runs.make_optimizers(policies, targs.lr)
    budgets, max_new, _ = agents.fit_limits(policies["extraction"], train_set, 0.0)
    queries = train.batch_at(train_set, args.step, args.queries, args.seed)
    seed = args.seed * 1_000_003 + args.step
    if args.warmup:
        one_step(policies, opts, queries, args, budgets, max_new, precision, seed)
    meter, hooks = Meter(), []
    shapes = model_shapes(next(iter(runs.unique(policies).values())).model)
    for pol in runs.unique(policies).values():
        hooks += instrument(pol.model, meter, shapes)
    t0 = time.perf_counter()
    with phases(meter):
        result = one_step(policies, opts, queries, args, budgets, max_new, precision, seed)
    step_s = time.perf_counter() - t0
    for h in hooks:
        h.remove()
    backward_factor = 1.0 if lora.adapters(next(iter(policies.values())).model) else 2.0
    meter.flops["update backward"] = backward_factor * meter.flops.get("update forward", 0.0)
    meter.tokens["update backward"] = meter.tokens.get("update forward", 0)
    other = step_s - sum(meter.seconds.values())
    table = {name: {"tokens": meter.tokens.get(name, 0), "seconds": round(meter.seconds.get(name, 0.0), 2),
                    "gflops": round(meter.flops.get(name, 0.0) / 1e9, 1),
                    "gflop_per_s": round(meter.flops.get(name, 0.0) / 1e9 / max(meter.seconds.get(name, 0.0), 1e-9), 1)}
             for name in ("prefill", "decode", "update forward", "update backward", "reference")}
    table["other"] = {"tokens": 0, "seconds": round(other, 2), "gflops": 0.0, "gflop_per_s": 0.0}
    return {"precision": precision, "sharing": share, "step_s": round(step_s, 2), "phases": table, **result}


@torch.no_grad()
def decode_seconds(policy, prompts: list[list[int]], steps: int, merge: bool) -> float:
    """Median seconds of one greedy decoding step over `prompts` (after their prefill), with the LoRA
    adapters folded into their weights (lora.merged_for_sampling, as sampling does) or separate."""
    policy.model.eval()
    with (lora.merged_for_sampling(policy.model) if merge else contextlib.nullcontext()):
        out, mask, pos = sharing.prefill(policy.model, prompts, policy.pad_id)
        tok, nxt, times = out.logits[:, -1].argmax(-1, keepdim=True), pos[:, -1:] + 1, []
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones_like(tok)], dim=1)
            t0 = time.perf_counter()
            out = policy.model(input_ids=tok, attention_mask=mask, position_ids=nxt, use_cache=True,
                               **{models.cache_keyword(policy.model): models.cache_of(out)})
            times.append(time.perf_counter() - t0)
            tok, nxt = out.logits[:, -1].argmax(-1, keepdim=True), nxt + 1
    return sorted(times)[len(times) // 2]


def decode_bench(args: Args, train_set) -> dict:
    """decode_seconds of the retrieval agent on this step's Q x G retrieval prompts (memory = the
    evidence session), separate and merged adapters, alternated twice."""
    policies = runs.load_run_policies(runs.resolve_lora_rank(train.Args(model=args.model, lora_rank=-1)), "cpu")
    pol = policies["retrieval"]
    budgets, _, _ = agents.fit_limits(pol, train_set, 0.0)
    queries = train.batch_at(train_set, args.step, args.queries, args.seed)
    prompts = [agents.retrieval_prompt(pol, ex.session_lines(ex.evidence_session), [], ex.question, ex.options,
                                       budgets)[0] for ex in queries for _ in range(args.group_size)]
    runs_ = {"separate": [], "merged": []}
    for _ in range(2):
        for name in runs_:
            runs_[name].append(round(decode_seconds(pol, prompts, args.decode_steps, name == "merged"), 4))
    return {"rows": len(prompts), "prompt_tokens": sum(map(len, prompts)), **runs_}


def markdown(results: list[dict], peaks: dict) -> str:
    lines = [f"matmul peak at the model's shapes: float32 {peaks['float32']:.0f} GFLOP/s, "
             f"bfloat16 {peaks['bfloat16']:.0f} GFLOP/s", "",
             "| config | step s | " + " | ".join(f"{p} s (GFLOP/s)" for p in results[0]["phases"]) + " |",
             "|---|---|" + "---|" * len(results[0]["phases"])]
    for r in results:
        cells = [f"{v['seconds']} ({v['gflop_per_s']})" if v["gflops"] else f"{v['seconds']}" for v in r["phases"].values()]
        lines.append(f"| {r['precision']}, {r['sharing']} | {r['step_s']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("tokens: " + "; ".join(f"{p} {v['tokens']}" for p, v in results[0]["phases"].items() if v["tokens"]))
    return "\n".join(lines)


def main(args: Args) -> dict:
    configs = [c.split(":") for c in args.configs.split(",")]
    for c in configs:
        check(len(c) == 2 and c[0] in ("float32", "bfloat16") and c[1] in ("plain", "full"),
              f"--configs: {':'.join(c)!r} is not precision:sharing (float32|bfloat16 : plain|full)")
    train_set, _ = runs.datasets(train.Args())
    probe = runs.load_run_policies(runs.resolve_lora_rank(train.Args(model=args.model, lora_rank=-1)), "cpu")
    shapes = model_shapes(probe["extraction"].model)
    del probe
    peaks = {"float32": matmul_peak(shapes, torch.float32), "bfloat16": matmul_peak(shapes, torch.bfloat16)}
    results = [run_config(args, precision, share, train_set) for precision, share in configs]
    out = {"args": asdict(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "bf16_supported": cpu_has_bf16(), "matmul_peak_gflop_per_s": peaks, "results": results}
    print(markdown(results, peaks))
    if args.decode_steps:
        out["decode_step_s"] = decode_bench(args, train_set)
        print(f"one decoding step of {out['decode_step_s']['rows']} retrieval rows (median of {args.decode_steps}, "
              f"two runs each): adapters separate {out['decode_step_s']['separate']} s, "
              f"merged {out['decode_step_s']['merged']} s")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    command(main, Args, __doc__)
