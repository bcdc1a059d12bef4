"""Loaded by schemathesis before the run (see schemathesis.toml)."""

from hypothesis.internal import lambda_sources

# Hypothesis describes each filter lambda by parsing its source file. On
# Python 3.11 before 3.11.8 that parse can fail with "SystemError: AST
# constructor recursion depth mismatch" (CPython gh-106905), which
# schemathesis reports as an error of the run. The description is only
# cosmetic, so fall back to a plain one.
_describe = lambda_sources.lambda_description


def _lambda_description(f):
    try:
        return _describe(f)
    except SystemError:
        return "lambda: <unknown>"


lambda_sources.lambda_description = _lambda_description
