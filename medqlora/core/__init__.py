"""Shared below every stage: the hardware and library facts (system) and the run folder (rundir)."""
