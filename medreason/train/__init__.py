"""SFT: trl's SFTTrainer configured from the settings, checkpoints and resume, and the checks printed before
training (token lengths, one example with its loss mask).

May import: config, answers, data, model.
"""
