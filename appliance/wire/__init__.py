"""The 0BTC Wire side: mint attestations, burn records, the fee reservoir."""
