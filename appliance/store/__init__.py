"""The node's durable state in SQLite (WAL, synchronous=FULL): ceremonies and their signed
transcripts, blame, what this node signed per request, operator approvals, the keys it
holds and its operators. Key shares themselves live sealed in the vault, never here.
"""

from .chain import ChainRecords
from .database import Store, StoreError
from .mint import AttestationRecords
from .operators import OperatorRecords, OperatorRow

__all__ = [
    "AttestationRecords",
    "ChainRecords",
    "OperatorRecords",
    "OperatorRow",
    "Store",
    "StoreError",
]
