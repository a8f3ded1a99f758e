"""JobService (routing each new job by the feature flags), the flags, and the checks that
keep both backends' ``Job`` rows honest (reconciliation)."""
