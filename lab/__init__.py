"""The lab: what measures Patronus rather than what Patronus is. Attack suites against the defended model
beside the base, the never-learned UNet and a from-scratch part (suites.py); every defence side by side
(compare.py); simpler defences to compare with (baselines.py); time and memory at SD's size (benchmark.py);
tables and plots (report.py). Each runs as `python -m lab.<name>`. The lab imports the method; the method never
imports the lab.
"""
