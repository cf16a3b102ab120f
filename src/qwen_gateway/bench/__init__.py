"""``qwen-gateway bench``: a load generator for any OpenAI-compatible server.

:mod:`.workload` makes the requests (length distributions, prompts of counted tokens, Poisson
arrivals), :mod:`.runner` sends them and times each one, :mod:`.stats` turns the records into
percentiles and rates, :mod:`.report` writes and reads the JSON results, :mod:`.plot` draws
them (matplotlib, imported only when a plot is asked for).
"""
