"""Grammar-constrained decoding over xgrammar: JSON mode, JSON Schema and forced tool calls.

Modules, each importing only those listed after it (an import-linter contract keeps it so):

- :mod:`.compiler`: :class:`~.compiler.GrammarCompiler` compiles a response format or a tool
  set once per model vocabulary, with a bounded LRU cache, compile timeouts and per-tenant
  fairness; xgrammar's own refusals become :class:`~qwen_gateway.errors.InvalidRequest`.
- :mod:`.constraint`: :class:`~.constraint.Constraint`, one per generated sequence: masks each
  step's logits and enforces the budget rule.
- :mod:`.toolcall`: the structural tag for Qwen's Hermes ``<tool_call>`` output.
- :mod:`.grammar`: :class:`~.grammar.CompiledGrammar`, a compiled grammar and its shared
  initial plan.
- :mod:`.schema`: checks on client schemas before compiling (size, depth, metaschema,
  ``$ref``) and the length-bound rewrite.
- :mod:`.plan`: the greedy closing policy (the shortest way to finish the grammar).
- :mod:`.vocabulary`: what every constraint of one model shares (stop and policy tokens) and
  the vocabulary handed to xgrammar.
- :mod:`.rejection`: calls into xgrammar whose errors mean "this schema cannot be used".
- :mod:`.bitmask`: applying a filled token bitmask to a logits row, with a cache of masks.

Only the in-process engine imports this package (it needs torch and xgrammar).
"""
