"""Answers: the answer styles (layout, system prompt, parser and markers), the chat prompt and the training
example, multiple-choice prompts, the one generation engine, repairing answers cut by their budget, and showing or
streaming an answer.

May import: config.
"""
