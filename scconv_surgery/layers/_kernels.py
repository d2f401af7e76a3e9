"""Fused C++ CPU inference kernels (placeholder until built)."""
from __future__ import annotations


def loaded() -> object | None:
    return None


def load() -> object | None:
    return None
