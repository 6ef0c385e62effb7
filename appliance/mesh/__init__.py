"""Peer transport: ZeroMQ with CURVE between the cluster's nodes, every message a signed
envelope checked for cluster, sender, signature, sequence and size before anyone sees it.
"""
