"""DPO after SFT: questions, sampled candidate answers, judged chosen/rejected pairs, and trl's DPOTrainer on
the SFT adapter.

May import: config, answers, data, model, train, evaluate, publish.
"""
