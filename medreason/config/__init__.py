"""Settings and the run plan: the constants a script declares, a preset, the command line, resolved once into a
frozen object; the automatic choices (device, backend, precision, CPU sizing) with their reasons; the machine, the
processes under `accelerate launch`, secrets and W&B, errors a user can fix, and the quiet start.

May import: nothing else of medreason (every other package builds on this one).
"""
