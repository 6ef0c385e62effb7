"""Bitcoin helpers that bitcoind does not offer: libbitcoinkernel as an in-process judge, and
Taproot key-path signing of spends the caller builds (README.md)."""
