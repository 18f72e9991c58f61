"""The benchmarks of docs/benchmarks.md, run from the repository root as modules
(``.venv/bin/python -m benchmarks.throughput ...``), so that they import the tests' model
builders (``tests.seed_reference``) and each other as packages."""
