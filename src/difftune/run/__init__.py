"""Run orchestration: the entry functions, checks, run dirs, resume, provenance, sweeps."""
