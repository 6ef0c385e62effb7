"""wire-mpc engine: the threshold-signing node of the 0BTC Wire bridge.

Subpackages are layers: frost <- ceremony <- workflows <- daemon; mesh, chain, wire, store
are leaves.
"""
