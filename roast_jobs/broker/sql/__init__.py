"""Every SQL statement of the broker, in one place.

``core``: the schema and what the transport runs (publish, claim, ack, leases, bindings).
``jobs``: looking at and steering single messages (job state, cancel, dead letters,
maintenance), used by the job-state API and the CLI.
"""

from .core import PRIORITIES, SCHEMA_VERSION, Statements, check_identifier, statements
from .jobs import JobStatements, job_statements

__all__ = [
    "PRIORITIES",
    "SCHEMA_VERSION",
    "JobStatements",
    "Statements",
    "check_identifier",
    "job_statements",
    "statements",
]
