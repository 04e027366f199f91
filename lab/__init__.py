"""
The research tools around the core: what evaluate.py measures (inputs.py, scorer.py, probes.py),
character tasks (tasks.py), seeded studies (study.py) and figures (plot.py). Run the tools from the
repository's root: python -m lab.study ..., python -m lab.plot ...
"""
