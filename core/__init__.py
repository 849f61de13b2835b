"""What every part of budgetq shares: errors, money, job statuses, settings and the queue.

No torch here; ``core.queue`` is the one module that imports Celery.
"""
