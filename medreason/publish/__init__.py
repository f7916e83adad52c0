"""The Hub: the model card rendered from a run's real results, the upload folder, a push that cannot lose the
run, and a Space serving the adapter with the chat page.

May import: config, answers, data, model, evaluate.
"""
