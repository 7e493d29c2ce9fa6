"""`python -m bench`: the whole benchmark suite (bench/run.py)."""

from bench.run import main

main()
