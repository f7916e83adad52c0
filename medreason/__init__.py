"""The parts the scripts at the top of the repository call, one package per stage of the pipeline.

config/ settings, the run plan and the machine · answers/ answer styles and generation · data/ rows in and out ·
model/ loading, saving and exporting models · train/ SFT · evaluate/ metrics, reports and benchmarks ·
preference/ DPO · rl/ GRPO · publish/ the Hub · serve/ the chat page. docs/ARCHITECTURE.md says what lives where and
which package may import which.
"""
