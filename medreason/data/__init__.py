"""Rows in: reading medical-o1-style rows from the Hub or a file, their layouts and validation, the SFT rows in the
run's answer style, seeded representative subsets, and the project's safety set mixed into training.

May import: config, answers.
"""
