"""Benchmarks: the synthetic PersonaMem-shaped generator (`data.generate`) and the PersonaMem loader
(`data.personamem`), both producing `data.example.Example`."""
from data.example import LETTERS, QUESTION_TYPES, ROLES, Example, Line, Session, read_split, write_split  # noqa: F401
