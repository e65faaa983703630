"""What the tests and the benchmarks both drive: services made ready, a bridge or a query API as
a subprocess of their own, real tokens, a real browser. Above the stack runner, below tests/ and
bench/ (neither imports the other)."""
