"""Agent workers: dreaming (DreamModel over a user's data) and moments (MomentBuilder over
transcripts). They need only the database and an LLM, so they live in the core; the runner
schedules them (``p8fs-run dreaming ...``, the Kubernetes CronJob)."""
