"""Continual-learning methods that act on the training loss (EWC, replay, ... plug in here)."""

from classp_hf.methods.base import ContinualMethod, NoMethod, create_method, list_methods, register_method

__all__ = ["ContinualMethod", "NoMethod", "create_method", "list_methods", "register_method"]
