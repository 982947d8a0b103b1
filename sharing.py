"""Prompt sharing: the same numbers as models.py's plain path, with each prompt prefix that several rows
share computed once. Skip this file on a first reading: it changes no number of the method, only the
time a step takes (docs/method.md, decision 17; docs/speed.md).

    policy.sharing = sharing            # runs.load_run_policies does this unless --no-share-prompts
    sharing.prefill(model, prompts, pad_id)                           # models.sample's first forward
    sharing.completion_logprobs(model, prompts, completions, pad_id)  # models.policy_logprobs

Two prefixes repeat in an agent's call. All rows of a chat model's call start with the same chat
template, instruction and worked example (the *head*, often most of a prompt); and the G rows of one
query's extraction call are the same prompt. Both are computed once, at two levels: the head once
for the whole call, its KV cache copied to every distinct prompt, whose own tokens are then computed
once and copied to its rows. Gradients flow back through each copy (`reorder_cache` is an
index_select), so the update's log-probs and gradients equal the plain path's (tests in float64).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

import models
from models import cache_keyword, cache_of, left_pad

MIN_SHARED = 0.25  # share a prefix only when that skips at least this fraction of the prompt tokens


def distinct_rows(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The distinct prompts, in first-seen order, and for each prompt the index of its distinct one.

    >>> distinct_rows([[5, 6], [5, 6], [7], [5, 6]])
    ([[5, 6], [7]], [0, 0, 1, 0])
    """
    index: dict[tuple, int] = {}
    owner = [index.setdefault(tuple(p), len(index)) for p in prompts]
    return [list(p) for p in index], owner


def common_prefix(prompts: list[list[int]], keep_last: bool = True) -> int:
    """Length of the prompts' longest common prefix; with `keep_last`, capped one token before the
    shortest one ends (that last token's logits are needed: they score the first new token).

    >>> common_prefix([[1, 2, 3, 4], [1, 2, 3], [1, 2, 9, 9]]), common_prefix([[1, 2], [1, 2]])
    (2, 1)
    >>> common_prefix([[1, 2], [1, 2, 3]], keep_last=False)
    2
    """
    n, cap = 0, min(len(p) for p in prompts) - (1 if keep_last else 0)
    while n < cap and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n


def head_pays(prompts: list[list[int]], head: int) -> bool:
    """Computing a common head of `head` tokens once, for these distinct prompts, skips at least
    MIN_SHARED of their tokens."""
    return head > 0 and (len(prompts) - 1) * head >= MIN_SHARED * sum(len(p) for p in prompts)


def prefix_cache(model, prefixes: list[list[int]], pad_id: int):
    """The KV cache of D prefixes, left-padded, with their common head computed once when that pays
    (`head_pays`): the head's cache is copied to the D rows and each prefix's remainder is computed on
    its copy, right-aligned (the padding sits between the head and the remainder, masked).
    Returns (output of the last forward: .logits (D, 1, V) at each prefix's last token, its cache;
    mask (D, Tp); positions (D, Tp)). `model` is a causal LM or its body (`base_model`)."""
    dev = next(model.parameters()).device
    D = len(prefixes)
    head = common_prefix(prefixes, keep_last=True) if D > 1 else 0
    lm_kw = {"logits_to_keep": 1} if hasattr(model, "get_output_embeddings") else {}  # a body has no head
    if not head_pays(prefixes, head):
        ids, mask = left_pad(prefixes, pad_id)  # (D, Tp)
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (D, Tp)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **lm_kw)
        return out, mask, pos
    first = model(input_ids=torch.tensor([prefixes[0][:head]], device=dev), use_cache=True, **lm_kw)  # (1, head)
    cache = cache_of(first)
    cache.reorder_cache(torch.zeros(D, dtype=torch.long, device=dev))  # the head, copied to D rows
    rest, rest_mask = left_pad([p[head:] for p in prefixes], pad_id)  # (D, Tr)
    rest, rest_mask = rest.to(dev), rest_mask.to(dev)
    mask = torch.cat([torch.ones(D, head, dtype=torch.long, device=dev), rest_mask], dim=1)  # (D, head + Tr)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (D, head + Tr)
    out = model(input_ids=rest, attention_mask=mask, position_ids=pos[:, head:], use_cache=True,
                **lm_kw, **{cache_keyword(model): cache})
    return out, mask, pos


# ======================================================================== sampling

def prefill(model, prompts: list[list[int]], pad_id: int):
    """`models.prefill` with each distinct prompt computed once (and the distinct prompts' common
    head once, `prefix_cache`), its cache and last logits then copied to its rows.
    Returns what `models.prefill` returns, for the same rows."""
    dev = next(model.parameters()).device
    distinct, owner = distinct_rows(prompts)
    out, mask, pos = prefix_cache(model, distinct, pad_id)
    if len(distinct) < len(prompts):  # copy each distinct prompt's cache, logits, mask to its rows
        rows = torch.tensor(owner, device=dev)  # (B,)
        cache_of(out).reorder_cache(rows)
        out.logits = out.logits[rows]  # (B, 1, V)
        mask, pos = mask[rows], pos[rows]  # (B, T)
    return out, mask, pos


# ======================================================================== the update

def prefix_plan(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]] | None:
    """Which prompt prefix each row of an update batch shares, or None when sharing would not pay.

    A prompt that several rows hold (the G rows of one query's extraction call) shares all but its
    last token. When the distinct prompts have a common head worth computing once (`head_pays`: a chat
    model's template and instruction), every other row shares that head; otherwise it keeps all but
    its last token as a prefix of its own. The last prompt token always stays in the row's own part:
    its logits score the first completion token. `prefix_cache` then computes the prefixes' common
    head once too. Returns (prefixes, owner): owner[i] is the index of row i's prefix.
    Worked example: rows 1-2 hold the same prompt, row 3 another, their head [5 6 7] is 3 of 12 tokens:

    >>> prefix_plan([[5, 6, 7, 8, 1], [5, 6, 7, 8, 1], [5, 6, 7, 9, 9, 9, 9]])
    ([[5, 6, 7, 8], [5, 6, 7]], [0, 0, 1])
    >>> prefix_plan([[5, 6, 7], [9, 8, 7]]) is None   # nothing shared
    True
    """
    distinct, owner = distinct_rows(prompts)
    copies = [owner.count(d) for d in range(len(distinct))]
    head = common_prefix(distinct) if len(distinct) > 1 else 0
    share_head = head_pays(distinct, head)
    index: dict[tuple, int] = {}
    row_prefix = [index.setdefault(tuple(p[:-1] if copies[o] > 1 or not share_head else p[:head]), len(index))
                  for p, o in zip(prompts, owner)]
    prefixes = [list(p) for p in index]
    forwarded = sum(len(p) for p in prefixes) - (len(prefixes) - 1) * head * share_head
    skipped = sum(len(prefixes[k]) for k in row_prefix) - forwarded
    if skipped < MIN_SHARED * sum(len(p) for p in prompts):
        return None
    return prefixes, row_prefix


def completion_logprobs(model, prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                        temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`models.completion_logprobs`, with each prompt prefix shared by several rows (`prefix_plan`)
    forwarded once: it runs `models.completion_logprobs` itself, on the model seen through the plan
    (`SharedPrefixLM`). Falls back to the plain path when sharing would not pay, under activation
    checkpointing (it keeps no cache) and for models with a special head. Returns the same (logp, mask)."""
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    checkpointing = checkpointing if checkpointing is not None else getattr(model, "is_gradient_checkpointing", False)
    plan = prefix_plan(prompts) if not checkpointing and not models.special_head(model) else None
    if plan is None:
        return models.completion_logprobs(model, prompts, completions, pad_id, temperature)
    return models.completion_logprobs(SharedPrefixLM(model, prompts, completions, pad_id, *plan), prompts,
                                      completions, pad_id, temperature)


MIN_BUCKET_SAVING = 0.25, 512  # split the rows only when that saves this share of the tokens, and this many


def rest_buckets(rest_lengths: list[int], owner: list[int], prefix_lengths: list[int]) -> list[list[int]]:
    """The rows of an update batch in buckets of similar length, each forwarded on its own: rows whose
    own part (rest) is short then do not pad to the longest one. A bucket computes again the prefixes
    its rows share, so the split is the one that forwards the fewest tokens (an exact search over the
    rows sorted by rest length: sum over buckets of rows x longest rest + their prefixes' tokens), and
    is taken only when it saves MIN_BUCKET_SAVING of the tokens; otherwise one bucket.
    Worked example: rests of 10, 10, 200, 200 tokens on one 50-token prefix: one bucket forwards
    4 x 200 + 50 = 850, two forward 2 x 10 + 50 + 2 x 200 + 50 = 520 (but 330 < 512 tokens saved):

    >>> rest_buckets([10, 200, 10, 200], [0, 0, 0, 0], [50])
    [[0, 1, 2, 3]]
    >>> rest_buckets([10, 900, 10, 900] * 2, [0] * 8, [50])
    [[0, 2, 4, 6], [1, 3, 5, 7]]
    """
    order = sorted(range(len(rest_lengths)), key=lambda i: rest_lengths[i])

    def cost(a: int, b: int) -> int:  # rows order[a:b] in one bucket (the longest rest is the last one)
        rows = order[a:b]
        return len(rows) * rest_lengths[rows[-1]] + sum(prefix_lengths[o] for o in {owner[i] for i in rows})

    n = len(order)
    best, cut = [0] + [None] * n, [0] * (n + 1)
    for b in range(1, n + 1):
        best[b], cut[b] = min((best[a] + cost(a, b), a) for a in range(b))
    one = cost(0, n)
    if one - best[n] < max(MIN_BUCKET_SAVING[0] * one, MIN_BUCKET_SAVING[1]):
        return [list(range(n))]
    buckets, b = [], n
    while b > 0:
        buckets.append(sorted(order[cut[b]:b]))
        b = cut[b]
    return buckets[::-1]


class SharedPrefixLM(torch.nn.Module):
    """`model` seen through a prefix plan, for `models.completion_logits`: its `base_model` gives the
    hidden states (B, T, H) of the right-padded prompts + completions that the plain path forwards,
    computed with each shared prefix forwarded once. For each bucket of rows of similar length
    (`rest_buckets`; usually one), the prefixes its rows share fill a KV cache (`prefix_cache`, their
    common head once) that is copied to the rows (`reorder_cache`, an index_select: gradients flow
    back to the shared prefix through it); then each row's own part, rest = prompt after its prefix +
    completion (right-padded), is forwarded on that cache with position ids that continue its prefix,
    and lands at positions len(prefix) .. of its row. The prefix positions stay zero: no completion
    token is scored from them (a prefix ends at least one token before its prompt does)."""

    def __init__(self, model, prompts, completions, pad_id: int, prefixes: list[list[int]], owner: list[int]):
        super().__init__()
        self.lm = model  # a submodule: parameters() and the device are the model's
        self.config = model.config
        self.plan = (prompts, completions, pad_id, prefixes, owner)

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()

    def base_model(self, input_ids: torch.Tensor, attention_mask=None, **_):
        prompts, completions, pad_id, prefixes, owner = self.plan
        rests = [p[len(prefixes[o]):] + c for p, c, o in zip(prompts, completions, owner)]
        full = None  # (B, T, H), filled bucket by bucket
        for rows in rest_buckets([len(r) for r in rests], owner, [len(p) for p in prefixes]):
            hidden, at = self.forward_rows(rows, rests, prefixes, owner, pad_id, input_ids.device)  # (N, H)
            if full is None:
                full = hidden.new_zeros(input_ids.shape[0], input_ids.shape[1], hidden.shape[-1])
            full = full.index_put(at, hidden)
        return SimpleNamespace(last_hidden_state=full)

    def forward_rows(self, rows: list[int], rests, prefixes, owner, pad_id: int, dev):
        """Hidden states (N, H) of the real rest tokens of `rows`, and their (row, position) indices."""
        base = self.lm.base_model
        used = sorted({owner[i] for i in rows})  # the prefixes these rows share
        out, mask, _ = prefix_cache(base, [prefixes[o] for o in used], pad_id)  # mask (D, Tp)
        cache = cache_of(out)
        local = torch.tensor([used.index(owner[i]) for i in rows], device=dev)  # (R,)
        cache.reorder_cache(local)  # (R, heads, Tp, d) per layer
        Tr = max(len(rests[i]) for i in rows)
        rest_ids = torch.full((len(rows), Tr), pad_id, dtype=torch.long)
        rest_mask = torch.zeros((len(rows), Tr), dtype=torch.long)
        for k, i in enumerate(rows):
            rest_ids[k, :len(rests[i])] = torch.tensor(rests[i])
            rest_mask[k, :len(rests[i])] = 1
        rest_ids, rest_mask = rest_ids.to(dev), rest_mask.to(dev)
        start = torch.tensor([len(prefixes[owner[i]]) for i in rows], device=dev)  # (R,): each row's prefix length
        positions = start[:, None] + torch.arange(Tr, device=dev)[None, :]  # (R, Tr)
        hidden = base(input_ids=rest_ids, attention_mask=torch.cat([mask[local], rest_mask], dim=1),
                      position_ids=positions, use_cache=True, **{cache_keyword(base): cache}).last_hidden_state  # (R, Tr, H)
        real = rest_mask.bool()  # (R, Tr)
        row_of = torch.tensor(rows, device=dev)[:, None].expand(-1, Tr)  # (R, Tr): the batch row of each token
        return hidden[real], (row_of[real], positions[real])
