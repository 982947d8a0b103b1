"""A deterministic, PersonaMem-shaped synthetic benchmark with ground-truth evidence.

    python -m data.generate                      # default sizes into data/synthetic/
    python -m data.generate --train-users 40 --out /tmp/toy

Each user has facts (pet, hometown, job, sibling) and likes / dislikes over several topics; some
likes change in a later session *with a stated reason* ("i used to love jazz but since i joined a
choir i prefer opera now ."). Sessions mix these lines with small talk and assistant turns, so not
every line matters. Every question is one of PersonaMem's seven types, has four
options (gold + distractors: a stale preference, a value never mentioned, another user's value),
and carries E_q: the ids of the exact history lines that support its answer, all inside one
session (`evidence_session`), which is the history H the agents see in training (Sec. 4.2, App. B.1).

History settings small / medium / large (4 / 8 / 16 sessions) mirror PersonaMem's 32K / 128K / 1M:
the same kinds of events are spread over more sessions with more small talk in between.

The text is lower-case with punctuation split off by spaces, so that the tiny default model's
word-level tokenizer round-trips it exactly. Same seed -> byte-identical files.
"""
from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path

from cli import InputError, check, check_seed, handled, output_folder
from data.example import LETTERS, QUESTION_TYPES, Example, Line, Session, split_files, write_split

SETTINGS = {"small": 4, "medium": 8, "large": 16}  # sessions per history
LINES_PER_SESSION = (8, 12)  # inclusive range

# ---------------------------------------------------------------- vocabulary of the world
PET_KINDS = ["cat", "dog", "parrot", "rabbit", "hamster", "turtle"]
NAMES = ["milo", "luna", "rex", "bella", "coco", "max", "nala", "oscar", "ziggy", "pepper", "simba",
         "daisy", "otis", "kiwi", "rosie", "bruno", "ana", "leo", "mia", "sam", "ines", "omar", "yuki",
         "nora", "ivan", "tess", "raj", "lena", "hugo", "zara"]
CITIES = ["lisbon", "oslo", "cairo", "lima", "denver", "osaka", "dublin", "nairobi", "hanoi", "quito",
          "porto", "austin", "krakow", "perth", "seville", "tunis"]
JOBS = ["nurse", "teacher", "pilot", "baker", "architect", "chemist", "lawyer", "plumber", "designer",
        "farmer", "journalist", "engineer", "librarian", "dentist"]
SIBLINGS = ["sister", "brother"]
TOPICS = {  # topic -> (noun used in sentences, items)
    "music": ("music", ["jazz", "techno", "country", "opera", "reggae", "blues", "metal", "folk"]),
    "food": ("food", ["tacos", "sushi", "curry", "pasta", "ramen", "falafel", "paella", "dumplings"]),
    "sport": ("sport", ["tennis", "running", "swimming", "climbing", "cycling", "yoga", "rowing", "boxing"]),
    "books": ("books", ["mysteries", "poetry", "fantasy", "biographies", "romance", "thrillers", "comics", "westerns"]),
    "drink": ("drink", ["tea", "coffee", "cocoa", "lemonade", "kombucha", "smoothies", "espresso", "cider"]),
}
# A reason for a change of taste, and what it implies in a new scenario (generalisation questions).
REASONS = [
    ("i started training for a marathon", "an early morning run club"),
    ("my doctor told me to cut sugar", "a sugar free menu"),
    ("i moved to a quiet village", "a calm countryside retreat"),
    ("i am saving money for a house", "a cheap local option"),
    ("my new job keeps me very busy", "a quick ten minute option"),
    ("i joined a local choir", "a group singing evening"),
    ("my kids started school", "a family friendly activity"),
    ("i adopted a puppy", "a dog friendly place"),
]
SMALL_TALK_USER = [
    "the weather was {w} today .", "i watched a {a} documentary last night .",
    "traffic was {a} this morning .", "i need to fix my {t} soon .", "my neighbour painted the {t} {c} .",
    "i found an old {t} in the attic .", "the bus was late again today .", "i slept badly last night .",
    "i am thinking about buying a new {t} .", "it has been a {a} week so far .",
]
SMALL_TALK_ASSISTANT = [
    "that sounds {a} .", "tell me more about that .", "how did that make you feel ?",
    "i am glad you shared that .", "noted , anything else on your mind ?", "that is good to know .",
    "i will keep that in mind .", "thanks for telling me .",
]
FILL = {"w": ["rainy", "sunny", "windy", "cold", "grey", "warm"],
        "a": ["long", "strange", "boring", "great", "busy", "quiet", "funny"],
        "t": ["bike", "fence", "lamp", "chair", "kettle", "door", "radio", "desk"],
        "c": ["blue", "green", "red", "yellow"]}

FACT_TEMPLATES = {
    "pet": ["i have a {kind} named {name} .", "my {kind} {name} kept me up all night .",
            "{name} , my {kind} , turned five this week ."],
    "hometown": ["i grew up in {city} .", "back in {city} where i was born , winters were mild .",
                 "my hometown is {city} ."],
    "job": ["i work as a {job} .", "my shift as a {job} ran late again .", "being a {job} is tiring some days ."],
    "sibling": ["my {rel} {name} is visiting next week .", "i called my {rel} {name} yesterday .",
                "{name} , my {rel} , got engaged ."],
}
# Preference lines always name their topic, so that a question about "music" can be matched to them
# without world knowledge of which items are music (a hop the tiny model learns slowly).
LIKE_TEMPLATES = ["when it comes to {noun} , i really love {item} .", "my favourite {noun} is {item} .",
                  "for {noun} , i can not get enough of {item} ."]
DISLIKE_TEMPLATES = ["when it comes to {noun} , i can not stand {item} .", "for {noun} , {item} is not for me .",
                     "as for {noun} , i really dislike {item} ."]
CHANGE_TEMPLATES = ["when it comes to {noun} , i used to love {old} but since {reason} i prefer {new} now .",
                    "for {noun} , these days i am into {new} instead of {old} because {reason} ."]


@dataclass
class Event:
    """One informative user line to be placed in some session."""
    kind: str  # fact:<name> | like | dislike | change
    text: str
    profile: list[str]  # ground-truth profile statements this line supports
    topic: str = ""
    item: str = ""  # the value the line states (pet name, city, liked item, new item ...)
    old: str = ""  # for changes: the stale preference
    reason: int = -1  # for changes: index into REASONS


# ---------------------------------------------------------------- one user

def _user_facts(rng: random.Random) -> dict:
    topics = rng.sample(sorted(TOPICS), 3)
    prefs = {}
    for t in topics:
        like, dislike, new = rng.sample(TOPICS[t][1], 3)
        prefs[t] = {"like": like, "dislike": dislike, "new": new}
    changed = rng.sample(topics, 2)  # two preferences change over time, each with a reason
    reasons = rng.sample(range(len(REASONS)), 2)
    for t, r in zip(changed, reasons):
        prefs[t]["reason"] = r
    pet_name, sibling_name = rng.sample(NAMES, 2)
    return {"pet": (rng.choice(PET_KINDS), pet_name), "hometown": rng.choice(CITIES),
            "job": rng.choice(JOBS), "sibling": (rng.choice(SIBLINGS), sibling_name), "prefs": prefs}


def _events(rng: random.Random, facts: dict) -> tuple[list[Event], list[Event]]:
    """The user's informative lines: (first-mention events, change events that must come later)."""
    kind, name = facts["pet"]
    rel, sib = facts["sibling"]
    fill = lambda key, **kw: rng.choice(FACT_TEMPLATES[key]).format(**kw)
    early = [
        Event("fact:pet", fill("pet", kind=kind, name=name), [f"pet {kind} {name}"], item=name),
        Event("fact:hometown", fill("hometown", city=facts["hometown"]), [f"hometown {facts['hometown']}"],
              item=facts["hometown"]),
        Event("fact:job", fill("job", job=facts["job"]), [f"job {facts['job']}"], item=facts["job"]),
        Event("fact:sibling", fill("sibling", rel=rel, name=sib), [f"{rel} {sib}"], item=sib),
    ]
    late = []
    for t, p in facts["prefs"].items():
        noun = TOPICS[t][0]
        early.append(Event("like", rng.choice(LIKE_TEMPLATES).format(item=p["like"], noun=noun),
                           [f"{noun} likes {p['like']}"], topic=t, item=p["like"]))
        early.append(Event("dislike", rng.choice(DISLIKE_TEMPLATES).format(item=p["dislike"], noun=noun),
                           [f"{noun} dislikes {p['dislike']}"], topic=t, item=p["dislike"]))
        if "reason" in p:
            text = rng.choice(CHANGE_TEMPLATES).format(old=p["like"], new=p["new"], noun=noun,
                                                       reason=REASONS[p["reason"]][0])
            late.append(Event("change", text, [f"{noun} likes {p['new']}", f"{noun} used to like {p['like']}"],
                              topic=t, item=p["new"], old=p["like"], reason=p["reason"]))
    rng.shuffle(early)
    return early, late


def _small_talk(rng: random.Random, role: str) -> str:
    template = rng.choice(SMALL_TALK_USER if role == "user" else SMALL_TALK_ASSISTANT)
    return template.format(**{k: rng.choice(v) for k, v in FILL.items()})


def _history(rng: random.Random, n_sessions: int, facts: dict):
    """Sessions of dated lines, and where each event landed: {event index: (session, line id)}."""
    early, late = _events(rng, facts)
    # First mentions go into a few sessions among the first ~2/3 (at least 3 events each, so that one
    # session can ground a "never mentioned" question); the other sessions are small talk only.
    # Changes land strictly after the session of their first mention.
    first_part = max(1, (2 * n_sessions) // 3)
    info = sorted(rng.sample(range(first_part), max(1, min(first_part, len(early) // 3))))
    slots: list[list[Event]] = [[] for _ in range(n_sessions)]
    for i, ev in enumerate(early):
        slots[info[i % len(info)]].append(ev)
    for ev in late:
        first = next(s for s, evs in enumerate(slots) if any(e.kind == "like" and e.item == ev.old for e in evs))
        slots[rng.randrange(first + 1, n_sessions) if first + 1 < n_sessions else first].append(ev)
    sessions, placed, next_id = [], [], 0
    day = rng.randrange(1, 20)
    for s, evs in enumerate(slots):
        n_lines = max(rng.randint(*LINES_PER_SESSION), 2 * len(evs) + 2)
        # user turns alternate with assistant turns; events take user turns, the rest is small talk
        user_turns = list(range(0, n_lines, 2))
        event_at = dict(zip(sorted(rng.sample(user_turns, len(evs))), evs))
        lines, notes = [], {}
        for j in range(n_lines):
            role = "user" if j % 2 == 0 else "assistant"
            ev = event_at.get(j)
            text = ev.text if ev else _small_talk(rng, role)
            lines.append(Line(next_id, s, role, text))
            if ev:
                placed.append((ev, s, next_id))
                notes[next_id] = list(ev.profile)
            next_id += 1
        day += rng.randrange(3, 15)
        sessions.append(Session(s, f"2024-{1 + day // 28 % 12:02d}-{1 + day % 28:02d}", lines, notes))
    return sessions, placed


# ---------------------------------------------------------------- questions

def _options(rng: random.Random, gold: str, distractors: list[str]) -> tuple[list[str], str]:
    """Four distinct options with the gold at a random position."""
    opts = [gold]
    for d in distractors:
        if d not in opts and len(opts) < 4:
            opts.append(d)
    assert len(opts) == 4, (gold, distractors)
    rng.shuffle(opts)
    return opts, LETTERS[opts.index(gold)]


def _never(rng: random.Random, pool: list[str], exclude: set[str], k: int) -> list[str]:
    return rng.sample([x for x in pool if x not in exclude], k)


def _questions(rng: random.Random, user: str, facts: dict, placed, other: dict, mentioned: set[str]):
    """All questions for one user: (qtype, question, options, gold, evidence ids, evidence session)."""
    out = []
    by_kind = {}
    for ev, s, lid in placed:
        by_kind.setdefault(ev.kind + ev.topic, []).append((ev, s, lid))

    def add(qtype, question, gold, distractors, where):
        opts, letter = _options(rng, gold, distractors)
        out.append((qtype, question, opts, letter, sorted(lid for _, _, lid in where), where[0][1]))

    # 1. recalling facts: one per fact kind, distractors: another user's value + never mentioned
    fact_q = {"pet": ("what is the name of my pet ?", NAMES), "hometown": ("where did i grow up ?", CITIES),
              "job": ("what do i do for a living ?", JOBS),
              "sibling": (f"what is my {facts['sibling'][0]} called ?", NAMES)}
    for key in rng.sample(sorted(fact_q), 2):
        (ev, s, lid), = by_kind["fact:" + key]
        question, pool = fact_q[key]
        theirs = other[key] if other[key] != ev.item else None
        never = _never(rng, pool, mentioned | {ev.item, other[key]}, 3)
        add(QUESTION_TYPES[0], question, ev.item, ([theirs] if theirs else []) + never, [(ev, s, lid)])

    changes = [x for x in placed if x[0].kind == "change"]
    steady = [t for t, p in facts["prefs"].items() if "reason" not in p]
    for ev, s, lid in changes:
        t, noun = ev.topic, TOPICS[ev.topic][0]
        items = TOPICS[t][1]
        dislike = facts["prefs"][t]["dislike"]
        never = _never(rng, items, mentioned, 2)
        where = [(ev, s, lid)]
        # 3. latest preference: stale value, disliked value, never mentioned
        add(QUESTION_TYPES[2], f"which {noun} do i prefer these days ?", ev.item, [ev.old, dislike, never[0]], where)
        # 4. full evolution: reversed order, wrong endpoints
        add(QUESTION_TYPES[3], f"how has my taste in {noun} changed ?", f"from {ev.old} to {ev.item}",
            [f"from {ev.item} to {ev.old}", f"from {ev.old} to {never[0]}", f"from {dislike} to {ev.item}"], where)
        # 5. reasons behind the update: other reasons (one of them this user's other reason)
        my_reasons = [facts["prefs"][x]["reason"] for x in facts["prefs"] if "reason" in facts["prefs"][x]]
        others = [REASONS[r][0] for r in rng.sample(range(len(REASONS)), len(REASONS)) if r != ev.reason]
        others.sort(key=lambda r: r not in {REASONS[m][0] for m in my_reasons})  # the user's other reason first
        add(QUESTION_TYPES[4], f"why did my taste in {noun} change ?", REASONS[ev.reason][0], others[:3], where)
        # 7. generalise the reason to a new scenario
        others = [REASONS[r][1] for r in rng.sample(range(len(REASONS)), len(REASONS)) if r not in my_reasons]
        add(QUESTION_TYPES[6], f"given why my taste in {noun} changed , what would suit me this weekend ?",
            REASONS[ev.reason][1], others[:3], where)
        # 6. recommendation aligned with the latest preference
        add(QUESTION_TYPES[5], f"can you recommend some {noun} for tonight ?", f"something with {ev.item}",
            [f"something with {ev.old}", f"something with {dislike}", f"something with {never[1]}"], where)
    for t in steady:  # 6. also for a preference that never changed
        (ev, s, lid), = by_kind["like" + t]
        noun, items = TOPICS[t]
        dislike = facts["prefs"][t]["dislike"]
        never = _never(rng, items, mentioned, 2)
        add(QUESTION_TYPES[5], f"can you recommend some {noun} for tonight ?", f"something with {ev.item}",
            [f"something with {dislike}", f"something with {never[0]}", f"something with {never[1]}"], [(ev, s, lid)])

    # 2. new things not mentioned: gold never mentioned anywhere; distractors = 3 items mentioned in one session
    per_session = {}
    for ev, s, lid in placed:
        if ev.kind != "change":
            per_session.setdefault(s, []).append((ev, s, lid))
    richest = max(per_session.values(), key=len)
    if len(richest) >= 3:
        picks = rng.sample(richest, 3)
        pool = [x for t in TOPICS for x in TOPICS[t][1]]
        gold = _never(rng, pool, mentioned, 1)[0]
        opts, letter = _options(rng, gold, [ev.item for ev, _, _ in picks])
        out.append((QUESTION_TYPES[1], "which of these have i never mentioned to you ?", opts, letter,
                    sorted(lid for _, _, lid in picks), picks[0][1]))
    return out


def _mentioned(facts: dict) -> set[str]:
    vals = {facts["pet"][1], facts["hometown"], facts["job"], facts["sibling"][1]}
    for p in facts["prefs"].values():
        vals |= {p["like"], p["dislike"]} | ({p["new"]} if "reason" in p else set())
    return vals


def generate(n_users: int, seed: int, prefix: str = "u", start: int = 0) -> list[Example]:
    """`n_users` users (settings small/medium/large in turn) and all their questions."""
    rng = random.Random(seed)
    users = [_user_facts(rng) for _ in range(n_users)]
    examples = []
    for i, facts in enumerate(users):
        user = f"{prefix}{start + i:04d}"
        setting = list(SETTINGS)[i % len(SETTINGS)]
        sessions, placed = _history(rng, SETTINGS[setting], facts)
        nb = users[(i + 1) % n_users]  # "another user's value" distractors come from the next user
        other = {"pet": nb["pet"][1], "hometown": nb["hometown"], "job": nb["job"], "sibling": nb["sibling"][1]}
        for k, (qtype, q, opts, gold, ev, es) in enumerate(_questions(rng, user, facts, placed, other, _mentioned(facts))):
            examples.append(Example(f"{user}-q{k}", user, qtype, q, opts, gold, sessions, ev, es, setting))
    return examples


def vocabulary_texts(examples: list[Example]) -> list[str]:
    """Every text the benchmark can show: history lines, questions, options, profile statements, and
    the generator's word lists (so that validation / test users never meet a word the tiny tokenizer
    lacks). The tiny word-level tokenizer is built from these (warmstart.build_tokenizer)."""
    texts = [l.text for ex in examples for l in ex.lines] + [o for ex in examples for o in ex.options]
    texts += [ex.question for ex in examples] + [st for ex in examples for s in ex.sessions for st in (s.profile or [])]
    texts += PET_KINDS + NAMES + CITIES + JOBS + SIBLINGS + [" ".join(v[1]) for v in TOPICS.values()]
    texts += [r for pair in REASONS for r in pair] + SMALL_TALK_USER + SMALL_TALK_ASSISTANT
    texts += [" ".join(v) for v in FILL.values()] + [w for t in TOPICS for w in (t, TOPICS[t][0])]
    texts += [t for ts in FACT_TEMPLATES.values() for t in ts] + LIKE_TEMPLATES + DISLIKE_TEMPLATES
    texts += CHANGE_TEMPLATES + ["used to like likes dislikes pet hometown job"]
    return texts


def generate_splits(out: str | Path, train_users: int = 300, val_users: int = 48, test_users: int = 48,
                    seed: int = 0) -> dict[str, list[Example]]:
    """Generate train / val / test (split by user: disjoint user ids and separate random streams)."""
    splits, start = {}, 0
    for k, (split, n) in enumerate((("train", train_users), ("val", val_users), ("test", test_users))):
        splits[split] = generate(n, seed * 1000 + k, start=start)
        write_split(out, split, splits[split])
        start += n
    return splits


DEFAULT_FOLDER = Path(__file__).resolve().parent / "synthetic"  # the default benchmark, next to the code


def ensure(folder: str | Path = "", splits=("train", "val", "test"), train_users: int = 300) -> Path:
    """The benchmark folder to read, with the files of `splits` checked to exist.

    "" means the default synthetic benchmark next to the code (data/synthetic), whatever the current
    directory; it is generated (default sizes, `train_users`) when that folder is missing or empty.
    Nothing is ever generated into any other folder, or over existing files: a folder without the
    files of `splits` is an InputError naming it and what it lacks.
    """
    path = Path(folder) if str(folder) else DEFAULT_FOLDER
    if path.resolve() == DEFAULT_FOLDER and (not path.exists() or not any(path.iterdir())):
        print(f"generating the synthetic benchmark into {path} ...")
        generate_splits(path, train_users=train_users)
    if not path.is_dir():
        raise InputError(f"{path}: no such benchmark folder (make one with: python -m data.generate --out {path})")
    missing = [f.name for s in splits for f in split_files(path, s) if not f.exists()]
    if missing:
        raise InputError(f"{path}: not a complete benchmark, missing {', '.join(missing)}")
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_FOLDER), help="output folder (must be empty or new)")
    p.add_argument("--train-users", type=int, default=300)
    p.add_argument("--val-users", type=int, default=48)
    p.add_argument("--test-users", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace the benchmark files already in --out")
    a = p.parse_args(argv)

    def generate_into() -> dict:
        out = Path(a.out)
        for flag in ("train_users", "val_users", "test_users"):
            check(getattr(a, flag) >= 1, f"--{flag.replace('_', '-')} must be at least 1, got {getattr(a, flag)}")
        check_seed(a.seed)
        check(not out.exists() or out.is_dir(), f"--out {out}: exists and is not a folder")
        existing = sorted(p.name for p in out.iterdir()) if out.exists() else []
        check(not existing or a.overwrite, f"--out {out}: the folder is not empty ({', '.join(existing[:4])}"
              f"{', ...' if len(existing) > 4 else ''}); pass --overwrite to replace the benchmark files in it")
        if existing:  # --overwrite replaces a benchmark this command wrote, nothing else
            output_folder(out, "--out", lambda p: all(f.exists() for s in ("train", "val", "test")
                                                      for f in split_files(p, s)), "a benchmark folder")
        return generate_splits(out, a.train_users, a.val_users, a.test_users, a.seed)
    t0 = time.time()
    splits = handled(generate_into)
    for split, exs in splits.items():
        print(f"{split}: {len({e.user for e in exs})} users, {len(exs)} questions")
    print(f"wrote {a.out} in {time.time() - t0:.2f}s")


if __name__ == "__main__":
    main()
