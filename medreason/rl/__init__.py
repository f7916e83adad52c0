"""GRPO after SFT: verifiable medical rewards, each a named function with a weight, and trl's GRPOTrainer on the
SFT adapter.

May import: config, answers, data, model, train, evaluate, publish, preference.
"""
