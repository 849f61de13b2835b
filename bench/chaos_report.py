"""What the chaos run left behind: the ledger and the workers' logs checked, and the section written.

``measure`` reads the ledger through ``models.attempts`` and the logs of every machine of a finished
``bench.chaos`` run; ``report`` turns that into the "Chaos: a spot fleet under faults" section.
"""

from __future__ import annotations

import collections
import re
import time

PRICE = "3.60"  # dollars an hour: 1000 micro-dollars a second, easy to read


def measure(chaos, started: float, fault_seconds: float, drain_seconds: float, drained: bool) -> dict:
    from models import queries
    from models.attempts import fleet_audit

    store = chaos.store()
    logs = "".join(m.logfile.read_text() for m in chaos.machines)
    with store.session() as s:
        fleet = fleet_audit(s)
        audit = queries.audit(s)
        lost_to_preemption = queries.preemption_summary(s, budget="chaos")
        budget = queries.get_budget(s, name="chaos")
    jobs, preempted = fleet.jobs, fleet.preempted
    by_id = {j.id: j for j in jobs}
    # Work charged twice: an attempt that finished (or was spooled) but was refused, for a job that ran again.
    finished_twice = set(re.findall(r"job (\w{32}) attempt \d+ finished as succeeded but is no longer ours", logs))
    finished_twice |= set(re.findall(r"spooled settlement of job (\w{32}) attempt \d+ not settled", logs))
    killed = set(chaos.killed_attempts)
    live_at_notice = [ja for ja in chaos.notice_attempts if ja not in killed]
    burned = [(j, a) for j, a in live_at_notice
              if (j, a) not in preempted and not (by_id[j].status == "succeeded" and by_id[j].attempts == a)]
    refused = len(re.findall(r"not running \w{32}: job \w{32} is ", logs))
    statuses = collections.Counter(j.status for j in jobs)
    exits = collections.Counter(cause for m in chaos.machines for cause, _ in m.exits)
    nonzero_asked = sum(1 for m in chaos.machines for cause, code in m.exits if cause.startswith("asked") and code != 0)
    return {
        "workers": len(chaos.machines), "fault_minutes": round(fault_seconds / 60, 1), "drain_seconds": round(drain_seconds),
        "drained": drained, "faults": dict(chaos.faults), "faults_total": sum(chaos.faults.values()),
        "jobs": len(jobs), "by_initiative": dict(collections.Counter(j.initiative for j in jobs)), "statuses": dict(statuses),
        "stop_reasons_of_unsucceeded": dict(collections.Counter(j.stop_reason for j in jobs if j.status != "succeeded")),
        "lost": sum(1 for j in jobs if j.status in ("admitted", "requeued", "running")),
        "double_charged_attempts": sum(1 for n in fleet.charges_per_attempt.values() if n > 1),
        "work_charged_twice": len(finished_twice),
        "attempts": sum(j.attempts for j in jobs), "preempted_attempts": sum(j.preemptions for j in jobs),
        "preemptions_checked": len(live_at_notice), "unverified_notices": chaos.unverified_notices,
        "dead_at_notice": len(chaos.notice_attempts) - len(live_at_notice), "burned": burned,
        "unverified_kills": chaos.unverified_kills,
        "attempts_burned_by_preemption": len(burned),
        "republished": sum(j.publications for j in jobs), "refused_deliveries": refused,
        "malformed_sent": chaos.malformed_sent, "rejected_recorded": fleet.rejected_messages,
        "rejected_logged": len(re.findall(r"rejected a message on queue|dropped an unreadable item", logs)),
        "worker_exits": dict(exits), "unexpected_exits": exits.get("unexpected", 0), "asked_but_nonzero": nonzero_asked,
        "audit_clean": not audit, "audit_problems": [f"{p.subject}: {p.detail}" for p in audit][:5],
        "spent_micros": budget.spent_micros, "lost_to_preemption_micros": lost_to_preemption.lost_micros,
        "preemption_charged_micros": lost_to_preemption.charged_micros,
        "preemptions_by_initiative": {name: {"attempts": n, "charged_micros": charged, "lost_micros": lost}
                                      for name, (n, charged, lost) in fleet.preemptions_by_initiative.items()},
        "leader_resends": sum(int(n) for n in re.findall(r"re-publishing (\d+) job\(s\) whose message is missing", logs)),
        "reaped": len(re.findall(r"reaped job \w{32} attempt", logs)),
        "spooled": len(re.findall(r"spooled to ", logs)), "spool_settled": len(re.findall(r"settled spooled job", logs)),
        "submitted": chaos.submitted, "submit_failures": chaos.submit_failures,
        "wall_minutes": round((time.monotonic() - started) / 60, 1),
    }


def report(m: dict, args) -> str:
    from core.money import format_micros

    faults = ", ".join(f"{k} {v}" for k, v in sorted(m["faults"].items(), key=lambda kv: -kv[1]))
    exits = ", ".join(f"{v} {k}" for k, v in sorted(m["worker_exits"].items(), key=lambda kv: -kv[1])) or "none"
    ok = lambda good: "**met**" if good else "**not met**"  # noqa: E731
    duplicates = m["refused_deliveries"]
    return f"""
Command: `python -m bench.chaos --minutes {args.minutes} --workers {args.workers} --faults {args.faults} --seed {args.seed}`
(measured on the project's shared 2-core CI machine, no GPU). {m['workers']} `budgetq worker` processes, each a
"machine" with a `BUDGETQ_HOME` of its own, sharing only a private PostgreSQL (initdb'd by the run), a
private Redis (no persistence: a restart loses every queued message) and a moto S3 bucket for
checkpoints and artifacts. Jobs: a stream of real `calibrate` runs and tiny-BERT `baseline` fine-tunes on
a 10-intent CLINC150 subset that checkpoint to the bucket every 10 steps; workers priced at ${PRICE}/h,
`LEASE_SECONDS=6`, `RESEND_AFTER_SECONDS=15`. Faults fired at random for {m['fault_minutes']} minutes, then
the fleet drained ({m['drain_seconds']} s{'' if m['drained'] else ', timed out'}). A supervisor restarted
every worker that exited.

| measure | target | measured |
|---|---|---|
| faults fired | ≥ 100 in ≥ 5 min | **{m['faults_total']}**: {faults} |
| jobs lost (never reached a final state) | 0 | **{m['lost']}** of {m['jobs']} ({', '.join(f'{v} {k}' for k, v in sorted(m['statuses'].items()))}) {ok(m['lost'] == 0)} |
| double charges (an attempt charged twice, or finished work paid for again) | 0 | **{m['double_charged_attempts'] + m['work_charged_twice']}** {ok(m['double_charged_attempts'] + m['work_charged_twice'] == 0)} |
| attempts used by preemption | 0 | **{m['attempts_burned_by_preemption']}** of {m['preemptions_checked']} live attempts on machines told they were preempted ({m['preempted_attempts']} preempted attempts in all, none counted; {m['dead_at_notice']} attempts already dead at the notice, their pool process SIGKILLed before, were left to the reaper; {m['unverified_notices']} notices and {m['unverified_kills']} kills came while the database was down and could not be checked) {ok(m['attempts_burned_by_preemption'] == 0)} |
| duplicate messages (deliveries refused by the claim) | ≤ jobs ({m['jobs']}) | **{duplicates}**; {m['republished']} messages re-sent by the leader or requeues {ok(duplicates <= m['jobs'])} |
| worker deaths from messages | 0 | **{m['unexpected_exits']}** unexpected exits; {m['malformed_sent']} malformed messages sent, {m['rejected_logged']} reached a worker and were rejected, {m['rejected_recorded']} recorded (the rest vanished with a broker restart before a worker got to them) {ok(m['unexpected_exits'] == 0)} |
| worker exits and their causes | | {exits}; asked to stop but exited non-zero: {m['asked_but_nonzero']} |
| audit | clean | **{'clean' if m['audit_clean'] else 'PROBLEMS: ' + '; '.join(m['audit_problems'])}** {ok(m['audit_clean'])} |
| dollars lost to preemption (work after the last checkpoint) | | **{format_micros(m['lost_to_preemption_micros'])}** of {format_micros(m['preemption_charged_micros'])} charged to preempted attempts; {format_micros(m['spent_micros'])} spent in all |

Preempted attempts by initiative (the baseline checkpoints to the bucket when the notice comes, so
it loses only what it did after that save, or everything when the notice came before its first
step; calibrate keeps no checkpoint and loses the whole attempt):
{', '.join(f"{k}: {v['attempts']} attempts, {format_micros(v['lost_micros'])} lost of {format_micros(v['charged_micros'])} charged" for k, v in sorted(m['preemptions_by_initiative'].items())) or 'none'}.
The upkeep leader re-published {m['leader_resends']} lost messages (queued messages die with each broker
restart) and reaped {m['reaped']} attempts of killed workers and pool processes; {m['spooled']} results were
spooled during database restarts and {m['spool_settled']} settled from the spool.

Jobs: {m['by_initiative']}; {m['attempts']} attempts in all. Jobs that did not succeed, by stop reason:
{m['stop_reasons_of_unsucceeded'] or 'none'} (a job fails only after `MAX_ATTEMPTS=3` attempts lost to SIGKILLed
workers or pool processes: those are real losses of a machine without notice, and count). Submissions
refused while a backend was down: {m['submit_failures']}. Wall time {m['wall_minutes']} minutes.
"""
