"""Models in and out: a model with LoRA for training, a trained model for answering (adapter, Hub id or merged
folder), the embedded SmolLM2, saving folders safely, merged and GGUF exports, and how long model work takes here.

May import: config, answers.
"""
