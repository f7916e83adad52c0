"""The chat page (Gradio): each question answered by the same engine, tag checks and repairs as evaluation.

May import: config, answers, model.
"""
