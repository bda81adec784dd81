"""`python -m ssl_train plan <overrides>`: predicted wall time, images/s, memory and the largest batch before a run (command.py)."""
