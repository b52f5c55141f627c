"""Orchestration: a manifest (its schema, `--set` overrides, the matrix it expands to), `bench run`
(the runner and its dry run), `bench submit` and `bench status`. It stands on the ground floor
(bench.core), the stages (pretrain, transfer), the executors, importers and tracking, and calls
reporting through bench.report's entry point only."""
