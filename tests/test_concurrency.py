"""16 processes race 100 admissions each for one budget: exactly what fits is admitted."""

import multiprocessing


from models import ledger, queries, spend
from models.db import Ledger
from core.errors import BudgetExhausted

PROCESSES, ATTEMPTS = 16, 100
TOTAL, ESTIMATE = 1_000_000, 3_000  # floor(1.00 / 0.003) = 333 of 1,600 attempts fit


def _racer(url: str, start, results) -> None:
    store = Ledger(url)
    admitted = rejected = 0
    start.wait()
    for _ in range(ATTEMPTS):
        try:
            with store.session() as s:
                ledger.admit_job(
                    s, budget="race", initiative="calibrate", queue="calibrate", params={},
                    estimate_micros=ESTIMATE, max_attempts=1,
                )
            admitted += 1
        except BudgetExhausted:
            rejected += 1
    results.put((admitted, rejected))


def test_racing_admissions_admit_exactly_what_fits(store, db_url):
    with store.session() as s:
        spend.create_budget(s, name="race", total_micros=TOTAL)
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Event(), spawn.Queue()
    racers = [spawn.Process(target=_racer, args=(db_url, start, results)) for _ in range(PROCESSES)]
    for racer in racers:
        racer.start()
    start.set()
    counts = [results.get(timeout=300) for _ in racers]
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0

    admitted = sum(a for a, _ in counts)
    assert admitted == TOTAL // ESTIMATE
    assert sum(r for _, r in counts) == PROCESSES * ATTEMPTS - admitted
    with store.session() as s:
        budget = queries.get_budget(s, name="race")
        assert queries.audit(s) == []
        assert len(queries.list_jobs(s, budget="race", limit=10_000)) == admitted
    assert budget.reserved_micros == admitted * ESTIMATE
    assert budget.spent_micros + budget.reserved_micros <= budget.total_micros
