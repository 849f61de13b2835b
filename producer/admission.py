"""Admitting work: validate, reserve in one transaction, commit, and only then publish."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import specs
from core.errors import BudgetExhausted, NotFound
from core.money import format_micros
from core.queue import publish_after_commit
from core.settings import Settings
from models import ledger, queries, views
from models.db import Ledger
from models.views import JobView
from producer.plan import Plan, PlanEntry


@dataclass(frozen=True)
class Decision:
    entry: str
    initiative: str
    estimate_micros: int
    admitted: bool
    reason: str = ""
    job: Optional[JobView] = None


def submit(
    store: Ledger, settings: Settings, *, budget: str, initiative: str, estimate_micros: int, params: dict[str, Any],
    queue: Optional[str], key: Optional[str], after: Sequence[str], max_attempts: Optional[int],
) -> tuple[JobView, bool]:
    """Admit one job and publish it once committed. Returns ``(job, created)``."""
    parsed = specs.params_to_json(specs.parse_params(initiative, params, settings.extra_initiatives))
    with store.session() as s:
        job, created = ledger.admit_job(
            s, budget=budget, initiative=initiative, queue=queue or settings.queue_for(initiative), params=parsed,
            estimate_micros=estimate_micros, max_attempts=max_attempts or settings.max_attempts,
            idempotency_key=key, after=after,
        )
    _publish_ready(store, [job])
    return job, created


def run_plan(store: Ledger, settings: Settings, plan: Plan, *, partial: bool) -> list[Decision]:
    """Admit a plan in rank order: all or nothing, or job by job with ``partial``."""
    if partial:
        with store.session() as s:
            _create_budget_if_asked(s, plan)
        decisions = _admit_each(store, settings, plan)
    else:
        # The budget is created in the admission's own transaction: a plan refused as a whole leaves
        # no budget behind either.
        with store.session() as s:
            _create_budget_if_asked(s, plan)
            decisions = _admit_all(s, settings, plan)
    _publish_ready(store, [d.job for d in decisions if d.job is not None])
    return decisions


def dry_run(store: Ledger, plan: Plan, *, partial: bool) -> list[Decision]:
    """What ``run_plan`` would admit and reject against the budget as it is now; writes nothing."""
    with store.session() as s:
        if _budget_exists(s, plan.budget):
            left = queries.get_budget(s, name=plan.budget).left_micros
        elif plan.total_micros is not None:
            left = plan.total_micros
        else:
            queries.get_budget(s, name=plan.budget)  # raises NotFound with the fix
        decisions, rejected = [], set()
        for entry in plan.entries:
            reason = _rejection(entry, left, rejected)
            if reason:
                rejected.add(entry.name)
            else:
                left -= entry.estimate_micros
            decisions.append(Decision(entry.name, entry.initiative, entry.estimate_micros, not reason, reason))
    if not partial and rejected:
        return [d if not d.admitted else Decision(d.entry, d.initiative, d.estimate_micros, False, "all-or-nothing: another job does not fit") for d in decisions]
    return decisions


def _rejection(entry: PlanEntry, left: int, rejected: set[str]) -> str:
    blocked = [dep for dep in entry.after if dep in rejected]
    if blocked:
        return f"runs after {blocked[0]!r}, which was rejected"
    if entry.estimate_micros > left:
        return f"needs {format_micros(entry.estimate_micros)}, {format_micros(left)} left"
    return ""


def _admit_all(s, settings: Settings, plan: Plan) -> list[Decision]:
    ids: dict[str, str] = {}
    decisions = []
    for entry in plan.entries:
        try:
            job, _ = _admit_entry(s, settings, plan, entry, ids)
        except BudgetExhausted as exc:
            raise BudgetExhausted(
                f"plan {plan.name!r} not admitted: {entry.name!r} does not fit ({exc}); nothing was admitted."
                " Use --partial to admit what fits, or --dry-run to see the plan against the budget",
                left_micros=exc.left_micros,
            ) from None
        ids[entry.name] = job.id
        decisions.append(Decision(entry.name, entry.initiative, entry.estimate_micros, True, "", job))
    return decisions


def _admit_each(store: Ledger, settings: Settings, plan: Plan) -> list[Decision]:
    ids: dict[str, str] = {}
    decisions = []
    for entry in plan.entries:
        blocked = [dep for dep in entry.after if dep not in ids]
        if blocked:
            decisions.append(Decision(entry.name, entry.initiative, entry.estimate_micros, False, f"runs after {blocked[0]!r}, which was rejected"))
            continue
        try:
            with store.session() as s:
                job, _ = _admit_entry(s, settings, plan, entry, ids)
        except BudgetExhausted as exc:
            decisions.append(Decision(entry.name, entry.initiative, entry.estimate_micros, False, str(exc)))
            continue
        ids[entry.name] = job.id
        decisions.append(Decision(entry.name, entry.initiative, entry.estimate_micros, True, "", job))
    return decisions


def _admit_entry(s, settings: Settings, plan: Plan, entry: PlanEntry, ids: dict[str, str]) -> tuple[JobView, bool]:
    return ledger.admit_job(
        s, budget=plan.budget, initiative=entry.initiative, queue=entry.queue or settings.queue_for(entry.initiative),
        params=entry.params, estimate_micros=entry.estimate_micros,
        max_attempts=entry.max_attempts or plan.max_attempts or settings.max_attempts,
        idempotency_key=plan.key(entry), rank=entry.rank, after=[ids[d] for d in entry.after],
    )


def _create_budget_if_asked(s, plan: Plan) -> None:
    if plan.total_micros is not None and not _budget_exists(s, plan.budget):
        ledger.create_budget(s, name=plan.budget, total_micros=plan.total_micros)


def _budget_exists(s, name: str) -> bool:
    try:
        queries.get_budget(s, name=name)
    except NotFound:
        return False
    return True


def _publish_ready(store: Ledger, jobs: Sequence[JobView]) -> None:
    """Publish, after commit, the jobs that can start now; the rest wait for their dependencies."""
    ready = [views.Ready(j.id, j.queue, j.reserved_micros) for j in jobs if not j.after and j.status in ledger.CLAIMABLE]
    waiting = [j.id for j in jobs if j.after and j.status in ledger.CLAIMABLE]
    if waiting:  # their dependencies may have succeeded already
        with store.session() as s:
            ready += ledger.ready_to_publish(s, job_ids=waiting)
    if ready:
        publish_after_commit(store, ready, mark=False)
