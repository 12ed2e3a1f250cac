"""Placeholder replaced by the PySCF harness (issue 3)."""
from typing import Any, ClassVar, Dict
from qcengine.programs.model import ProgramHarness


class PySCFHarness(ProgramHarness):
    _defaults: ClassVar[Dict[str, Any]] = {"name": "pyscf", "scratch": False, "thread_safe": False,
        "thread_parallel": True, "node_parallel": False, "managed_memory": True}

    @staticmethod
    def found(raise_error: bool = False) -> bool:
        return False

    def compute(self, input_data, config):
        raise NotImplementedError
