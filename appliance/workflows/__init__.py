"""The bridge's flows: deposit → mint attestation (and, to come, burn → withdrawal and fee
consolidation), each a request every node checks against its own view."""
