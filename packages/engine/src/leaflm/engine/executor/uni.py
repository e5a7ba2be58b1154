"""`uni`: the model runner in the driver's own process and thread (the TP=1 default).

`execute_model` is a direct call of `ModelRunner.execute`: no message, no copy, so a
single-device engine pays nothing for the executor layer.
"""

from __future__ import annotations

from typing import Any

import torch

from leaflm.engine.config import ModelConfig
from leaflm.engine.executor.base import Executor
from leaflm.engine.model_runner import ModelRunner
from leaflm.engine.scheduler import SchedulerOutput


class UniExecutor(Executor):
    def __init__(self, model_config: ModelConfig) -> None:
        self.runner = ModelRunner(model_config)
        self.driver_device = model_config.device

    def collective_rpc(self, method: str, args: tuple[Any, ...] = ()) -> list[Any]:
        attr = getattr(self.runner, method)
        return [attr(*args) if callable(attr) else attr]

    def execute_model(
        self, sched: SchedulerOutput, logit_rows: list[tuple[int, int]]
    ) -> torch.Tensor:
        return self.runner.execute(sched, logit_rows)

    @property
    def vocab_size(self) -> int:
        return self.runner.vocab_size

    def shutdown(self) -> None:
        pass
