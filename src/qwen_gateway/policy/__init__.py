"""Who may do what, and how much: authentication (keys, JWT), rate limits and budgets.

Each concern is a small class with an in-process and a Redis implementation where replicas
must agree; container.py picks them.
"""
