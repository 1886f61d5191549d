"""Joining and showing results: the report model, plots, verdicts, run comparison, the
cross-study summary and the outputs index."""
