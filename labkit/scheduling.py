"""Who runs next: the engine's scheduling policies, each a small class with one question to answer.

At every iteration the engine asks its policy to rank the live requests; the top ones that fit
the batch and the KV blocks run this iteration, the rest wait (keeping their blocks while memory
allows). Ranking every iteration is what makes batching *continuous* (Orca, OSDI 2022): a request
joins as soon as there is room and leaves the moment it ends, instead of riding a batch to its end.

* ``FCFS``: oldest first. Simple and fair, but one long reply at the front makes every short one
  behind it wait (head-of-line blocking).
* ``SkipJoinMLFQ``: FastServe (Wu et al., 2023). Queues of rising quantum (in tokens); a request
  starts in the first queue whose quantum covers its prefill (*skip-join*: long prompts skip the
  fast queues instead of hogging them), is demoted when it uses up its quantum, and is preempted at
  token granularity by anything in a higher queue. Short jobs finish early without knowing lengths
  in advance; a request that waits too long is promoted back to the top so nothing starves.

The other knob is when prompts are processed (``PREFILL_MODES``, used by the engine):
``"prefill-first"`` runs waiting prompts before the next decode step (low time to first token,
but every running stream stalls while a long prompt runs); ``"decode-first"`` lets running
requests finish before new prompts start (smooth streams, long waits: request-level batching);
``"chunked"`` adds at most ``chunk_tokens`` prompt tokens to each decode step (Sarathi-Serve).

Example:
    >>> policy = make_policy("mlfq", base_quantum=4)
    >>> policy.first_level(prompt_tokens=10, prefill_tokens_per_step=4)   # 3 steps' worth: queue 0 (quantum 4)
    0
"""

from __future__ import annotations

from dataclasses import dataclass

PREFILL_MODES = ("prefill-first", "decode-first", "chunked")


@dataclass
class Scheduled:
    """What a policy needs to know about a live request (the engine keeps one per request)."""

    request_id: str
    arrival: int  # order of arrival (a counter, so ties are impossible)
    prompt_tokens: int
    level: int = 0  # MLFQ queue
    used_in_level: int = 0  # tokens generated since it entered its queue
    waited: int = 0  # iterations since it last ran


class FCFS:
    """First come, first served: rank by arrival."""

    name = "fcfs"

    def admit(self, entry: Scheduled, *, prefill_tokens_per_step: int) -> None:
        pass

    def rank(self, entries: list[Scheduled]) -> list[Scheduled]:
        return sorted(entries, key=lambda e: e.arrival)

    def after_iteration(self, ran: list[Scheduled], waited: list[Scheduled], tokens: dict[str, int]) -> None:
        pass


class SkipJoinMLFQ:
    """FastServe's skip-join multi-level feedback queue (see the module docstring).

    Queue ``k`` has a quantum of ``base_quantum * 2**k`` generated tokens; prefill counts as
    ``ceil(prompt_tokens / prefill_tokens_per_step)`` tokens' worth of work for skip-join.
    ``starve_after``: iterations a request may wait before it is promoted to queue 0.
    """

    name = "mlfq"

    def __init__(self, *, levels: int = 6, base_quantum: int = 8, starve_after: int = 256):
        if levels < 1 or base_quantum < 1 or starve_after < 1:
            raise ValueError("mlfq needs levels >= 1, base_quantum >= 1 and starve_after >= 1")
        self.levels, self.base_quantum, self.starve_after = levels, base_quantum, starve_after

    def quantum(self, level: int) -> int:
        return self.base_quantum * 2 ** level

    def first_level(self, *, prompt_tokens: int, prefill_tokens_per_step: int) -> int:
        cost = -(-prompt_tokens // max(1, prefill_tokens_per_step))
        return next((k for k in range(self.levels) if self.quantum(k) >= cost), self.levels - 1)

    def admit(self, entry: Scheduled, *, prefill_tokens_per_step: int) -> None:
        entry.level = self.first_level(prompt_tokens=entry.prompt_tokens,
                                       prefill_tokens_per_step=prefill_tokens_per_step)

    def rank(self, entries: list[Scheduled]) -> list[Scheduled]:
        return sorted(entries, key=lambda e: (e.level, e.arrival))

    def after_iteration(self, ran: list[Scheduled], waited: list[Scheduled], tokens: dict[str, int]) -> None:
        for e in ran:
            e.waited = 0
            e.used_in_level += tokens.get(e.request_id, 0)
            if e.used_in_level >= self.quantum(e.level) and e.level < self.levels - 1:
                e.level, e.used_in_level = e.level + 1, 0  # used up its quantum: demoted
        for e in waited:
            e.waited += 1
            if e.waited >= self.starve_after and e.level > 0:
                e.level, e.used_in_level, e.waited = 0, 0, 0  # promoted so that it cannot starve


POLICIES = {"fcfs": FCFS, "mlfq": SkipJoinMLFQ}


def make_policy(name: str, **options):
    """A policy by its name in the serve config: ``"fcfs"`` or ``"mlfq"`` (with its options)."""
    if name not in POLICIES:
        raise ValueError(f"unknown scheduling policy {name!r}: use one of {', '.join(POLICIES)}")
    return POLICIES[name](**options)
