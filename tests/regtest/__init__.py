"""A bitcoind -regtest look-alike for tests: bitcoind's RPC and ZMQ interface over a node whose
every block and script libbitcoinkernel judges (run it with `python -m tests.regtest`)."""
