"""The ``"hf"`` rollout engine: ``transformers``' ``model.generate`` (a reference for the tests and a
fallback). ``Sample.logprobs`` is ``None``; with a seed, the global torch RNG is seeded once per
:meth:`~alignkit.rollout.engine.RolloutEngine.generate` call (so draws depend on the batching)."""

from __future__ import annotations

from typing import Any

import torch

from .engine import ENGINES, Job, ModelEngine, Sample, Sampling, cut_at_stop, left_pad


@ENGINES.register("hf")
class HFEngine(ModelEngine):
    """``model.generate`` on the caller's model (or a private copy with ``copy=True``)."""

    name = "hf"

    def _begin_call(self, sampling: Sampling) -> None:
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)

    def _generate_batch(self, jobs: list[Job], job_ids: list[int], n: int, sampling: Sampling) -> list[Sample]:
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        input_ids, attention = left_pad([ids for _, ids in jobs], pad)
        width = input_ids.shape[1]
        kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, eos_token_id=self.stops, pad_token_id=pad)
        if sampling.greedy:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        samples = []
        for job, row in zip(jobs, out[:, width:].tolist()):
            completion, finished = cut_at_stop(row, self.stops)
            samples.append(self._sample(job, completion, finished, None))
        return samples
