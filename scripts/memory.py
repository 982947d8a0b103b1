"""Memory of CoMAM's three trained policies: full fine-tuning against LoRA, counted in code.

    python scripts/memory.py                      # SmolLM2-135M, Qwen2.5-0.5B and Qwen2.5-1.5B-sized configs
    python scripts/memory.py --rank 8 --targets attention

Each model is built from its config on the meta device (shapes only: no weights, no download, no
memory), with the agents set up as train.py sets them up: three full copies (full fine-tuning), or one
frozen base with three adapter sets (lora.share_frozen + lora.add_adapters). One AdamW step is taken on
meta gradients, and the bytes of every parameter, gradient and optimizer-state tensor are added up.
Activations and the KV cache come on top; --micro-batch and --gradient-checkpointing bound them.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's modules

import lora  # noqa: E402
from cli import command  # noqa: E402

# published configs (hidden, intermediate, layers, heads, kv heads, vocab; tied embeddings)
CONFIGS = {
    "SmolLM2-135M": ("llama", 576, 1536, 30, 9, 3, 49152),
    "Qwen2.5-0.5B": ("qwen2", 896, 4864, 24, 14, 2, 151936),
    "Qwen2.5-1.5B": ("qwen2", 1536, 8960, 28, 12, 2, 151936),
}
GB = 2**30


@dataclass
class Args:
    rank: int = 16
    """LoRA rank"""
    targets: str = "all"
    """layers with adapters: all | attention | mlp | comma list"""
    models: str = ",".join(CONFIGS)
    """which configs, comma-separated"""


def build(kind: str, hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    cfg_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if kind == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = cfg_cls(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                     num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=True)
    with torch.device("meta"):
        return model_cls(config)


def nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if id(t) not in seen:  # tied weights are one tensor
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def trained_bytes(models: list[torch.nn.Module]) -> dict:
    """Bytes of the weights (each distinct tensor once), gradients and AdamW state of the trainable
    parameters, after one optimizer step on meta gradients."""
    params = [p for m in models for p in m.parameters()]
    trainable = list({id(p): p for p in params if p.requires_grad}.values())
    for p in trainable:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.AdamW(trainable, lr=1e-4, foreach=False)
    opt.step()
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    return {"weights": nbytes(params), "gradients": nbytes([p.grad for p in trainable]), "optimizer": nbytes(state),
            "trainable_params": sum(p.numel() for p in trainable)}


def estimate(name: str, rank: int, targets: tuple[str, ...]) -> dict:
    """Full fine-tuning (three float32 copies; a fourth, frozen, for a KL reference) against LoRA (one
    frozen base, float32 on a CPU or bf16 on CUDA, and three float32 adapter sets)."""
    base = build(*CONFIGS[name])
    n_params = sum(p.numel() for p in {id(p): p for p in base.parameters()}.values())
    full = trained_bytes([base] + [build(*CONFIGS[name]) for _ in range(2)])
    frozen = base.requires_grad_(False)
    agents = [lora.add_adapters(lora.share_frozen(frozen), lora.LoRAConfig(rank, 2.0 * rank, targets)) for _ in range(3)]
    adapters = trained_bytes(agents)
    base_bytes = n_params * 4
    lora_fp32 = adapters["weights"] + adapters["gradients"] + adapters["optimizer"]
    return {"model": name, "params": n_params, "rank": rank,
            "adapter_params_per_agent": adapters["trainable_params"] // 3,
            "full_gb": (full["weights"] + full["gradients"] + full["optimizer"]) / GB,
            "full_with_reference_gb": (full["weights"] + full["gradients"] + full["optimizer"] + base_bytes) / GB,
            "lora_cpu_gb": lora_fp32 / GB,  # the base float32, counted once in `weights`
            "lora_cuda_bf16_base_gb": (lora_fp32 - base_bytes / 2) / GB}


def advice(row: dict, gpu_gb: float, headroom: float = 0.6) -> str:
    """Which setup leaves at least (1 - headroom) of a GPU for activations, KV cache and the CUDA context."""
    if row["full_gb"] <= headroom * gpu_gb:
        return "full or LoRA"
    if row["lora_cuda_bf16_base_gb"] <= headroom * gpu_gb:
        return "LoRA"
    return "neither"


def main(args: Args) -> list[dict]:
    rows = [estimate(m, args.rank, lora.target_names(args.targets)) for m in args.models.split(",")]
    print(f"| model | params | full FT, 3 policies (GB) | + KL reference (GB) | LoRA r={args.rank}: adapter params per agent "
          "| LoRA, fp32 base (GB) | LoRA, bf16 base on CUDA (GB) | 16 GB GPU | 24 GB GPU | 80 GB GPU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:.0f}M | {r['full_gb']:.1f} | {r['full_with_reference_gb']:.1f} | "
              f"{r['adapter_params_per_agent'] / 1e6:.2f}M | {r['lora_cpu_gb']:.2f} | {r['lora_cuda_bf16_base_gb']:.2f} | "
              + " | ".join(advice(r, g) for g in (16, 24, 80)) + " |")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    command(main, Args, __doc__)
