"""Parts that medical_fine_tuning.py (and later inference/evaluation) call: one module per job."""
