"""The scripted evaluator, logging while it runs (tests/test_logs.py): a line naming its
database (DATABASE_URL, with its password) and a warning whose exception quotes the
password as libpq's ``password=``; both must come out masked, with the job's fields."""

from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

from roast_jobs.domain.evaluator import AgentInput, DocumentInput, EvaluationOutput
from tests.apps.scripted_evaluator import ScriptedEvaluator

log = logging.getLogger("tests.logging_evaluator")


class LoggingEvaluator(ScriptedEvaluator):
    def evaluate(self, document: DocumentInput, agent: AgentInput) -> EvaluationOutput:
        url = os.environ.get("DATABASE_URL", "")
        log.info("evaluating %s on %s", document.document_id, url)
        try:
            raise ConnectionError(f"host=db user=app password={urlsplit(url).password}")
        except ConnectionError:
            log.warning("evaluating %s: a hiccup", document.document_id, exc_info=True)
        return super().evaluate(document, agent)
