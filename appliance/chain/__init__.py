"""The Bitcoin side of a node: bitcoind RPC and ZMQ, the chain view, deposits, UTXOs,
transactions, fees, broadcast and bumping."""
