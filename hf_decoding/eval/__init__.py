"""Offline evaluation harnesses (arithmetic word problems, particle-method budget scaling)."""

from .arithmetic import INSTRUCTION, Problem, make_problems, problem_inputs

__all__ = ["INSTRUCTION", "Problem", "make_problems", "problem_inputs"]
