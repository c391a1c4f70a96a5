"""Task definitions for lm-evaluation-harness that its registry lacks, in its YAML format (``supergpqa.yaml``).

``rpt lm_eval`` always adds this directory to lm-eval's task paths (``rpt/eval/harness_tasks.py``); it is a package
only so that a wheel carries the YAML files (``pyproject.toml``'s package data)."""
