"""Did it help: base vs tuned on held-out rows, per-answer metrics, judges, exam benchmarks and how they are
asked, training-row overlap with them, safety rates, and the run's results.json, report.md and plots.

May import: config, answers, data, model, train.
"""
