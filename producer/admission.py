"""Admitting work: validate, reserve in one transaction, commit, and only then publish."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import specs
from specs.datasets import check_dataset
from core.errors import BudgetExhausted, InvalidInput, NotFound
from core.money import format_micros
from core.queue import publish_after_commit
from core.settings import Settings
from models import ledger, queries, spend, views
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
    spec = specs.get(initiative, settings.extra_initiatives)
    parsed = specs.params_to_json(specs.parse_params(initiative, params, settings.extra_initiatives))
    check_dataset(parsed)
    with store.session() as s:
        parsed, after = with_model_source(s, spec, budget=budget, params=parsed, after=list(after), extra=settings.extra_initiatives)
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


def dry_run(store: Ledger, plan: Plan, *, partial: bool, extra_initiatives: str = "") -> list[Decision]:
    """What ``run_plan`` would admit and reject against the budget as it is now; writes nothing."""
    with store.session() as s:
        if _budget_exists(s, plan.budget):
            left = queries.get_budget(s, name=plan.budget).left_micros
        elif plan.total_micros is not None:
            left = plan.total_micros
        else:
            queries.get_budget(s, name=plan.budget)  # raises NotFound with the fix
        decisions, rejected = [], set()
        names = {entry.name for entry in plan.entries}
        for entry in plan.entries:
            if entry.params.get("model_job") and entry.params["model_job"] not in names:
                # An outside model: the same checks as admission, read-only.
                spec = specs.get(entry.initiative, extra_initiatives)
                with_model_source(s, spec, budget=plan.budget, params=entry.params, after=[], extra=extra_initiatives)
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
    params, after = dict(entry.params), [ids[d] for d in entry.after]
    if params.get("model_job") in ids:  # the plan named an entry: use that entry's job
        params["model_job"] = ids[params["model_job"]]
    spec = specs.get(entry.initiative, settings.extra_initiatives)
    params, after = with_model_source(s, spec, budget=plan.budget, params=params, after=after, extra=settings.extra_initiatives)
    return ledger.admit_job(
        s, budget=plan.budget, initiative=entry.initiative, queue=entry.queue or settings.queue_for(entry.initiative),
        params=params, estimate_micros=entry.estimate_micros,
        max_attempts=entry.max_attempts or plan.max_attempts or settings.max_attempts,
        idempotency_key=plan.key(entry), rank=entry.rank, after=after,
    )


def with_model_source(s, spec: specs.Spec, *, budget: str, params: dict[str, Any], after: list[str],
                      extra: str = "") -> tuple[dict[str, Any], list[str]]:
    """``params`` with ``model_job`` set to the job whose model this one uses, and ``after`` with it.

    Lineage is by declaration: the job named by ``model_job``, else the one model among the jobs in
    ``after`` (a job that stores a model, or one that ran on a model). The source must be in the
    same budget and store a model; none or several is refused, naming the fix.
    """
    if not spec.uses_model:
        return params, after
    named = params.get("model_job") or ""
    derived = not named  # found through a dependency: it finishes before this job already
    if derived:
        sources = sorted({src for src in (_model_source_of(queries.get_job(s, job_id=d), extra) for d in after) if src})
        if len(sources) != 1:
            found = f"several ({', '.join(sources)})" if sources else "none"
            raise InvalidInput(
                f"{spec.name} runs on another job's model, and its dependencies offer {found};"
                f" name it with --param model_job=<job id> or run it --after the job that stores it"
            )
        named = sources[0]
    source = queries.get_job(s, job_id=named)  # NotFound names the fix
    if source.budget != budget:
        raise InvalidInput(f"model_job {named} belongs to budget {source.budget!r}, not {budget!r}; a job only uses models of its own budget")
    if not specs.get(source.initiative, extra).makes_model:
        raise InvalidInput(f"model_job {named} is a {source.initiative} job, which stores no model; name a job that does")
    waits = derived or _waits_for(s, after, named)
    return {**params, "model_job": named}, after if waits else [*after, named]


def _waits_for(s, after: list[str], target: str) -> bool:
    """Whether a job running after ``after`` already waits, directly or through them, for ``target``."""
    seen, todo = set(), list(after)
    while todo:
        job_id = todo.pop()
        if job_id == target:
            return True
        if job_id not in seen:
            seen.add(job_id)
            todo += queries.get_job(s, job_id=job_id).after
    return False


def _model_source_of(job: JobView, extra: str) -> Optional[str]:
    spec = specs.get(job.initiative, extra)
    if spec.makes_model:
        return job.id
    return job.params.get("model_job") or None if spec.uses_model else None
def _create_budget_if_asked(s, plan: Plan) -> None:
    if plan.total_micros is not None and not _budget_exists(s, plan.budget):
        spend.create_budget(s, name=plan.budget, total_micros=plan.total_micros)


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
