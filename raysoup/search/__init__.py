"""The sweep's search: `sweep.space` distributions (`distributions`, imported by the config:
no torch, no Ray) and the soup-aware proposer (`proposer`, pure numpy; its Tune adapter is
`raysoup/orchestration/search.py`).

Nothing is imported here, so that importing the distributions imports nothing else."""
