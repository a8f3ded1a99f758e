"""RoastMyPost's job domain in plain Python (no Celery): payloads, the evaluator, what one
evaluation does on either backend, batches, imports and the retry classification."""
