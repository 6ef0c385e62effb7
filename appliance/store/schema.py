"""Numbered schema migrations. A database records the last one applied in `user_version`;
migrations only ever append (a shipped one is never edited)."""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE ceremonies (
            id          TEXT PRIMARY KEY,
            kind        TEXT NOT NULL,
            role        TEXT NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('open', 'completed', 'failed', 'abandoned')),
            request_id  TEXT,
            detail      TEXT NOT NULL DEFAULT '{}',
            started_at  REAL NOT NULL,
            finished_at REAL
        );
        CREATE TABLE transcript (
            position    INTEGER PRIMARY KEY AUTOINCREMENT,
            ceremony_id TEXT NOT NULL,
            direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            sender      INTEGER NOT NULL,
            round       TEXT NOT NULL,
            envelope    BLOB NOT NULL,
            recorded_at REAL NOT NULL
        );
        CREATE INDEX transcript_by_ceremony ON transcript (ceremony_id, position);
        CREATE TABLE blame (
            ceremony_id TEXT NOT NULL,
            participant INTEGER NOT NULL,
            reason      TEXT NOT NULL,
            evidence    TEXT NOT NULL DEFAULT '{}',
            recorded_at REAL NOT NULL
        );
        CREATE TABLE signed_requests (
            request_id     TEXT PRIMARY KEY,
            kind           TEXT NOT NULL,
            content_hash   BLOB NOT NULL,
            first_ceremony TEXT NOT NULL,
            signed_at      REAL NOT NULL
        );
        CREATE TABLE approvals (
            kind         TEXT NOT NULL,
            content_hash BLOB NOT NULL,
            actor        TEXT NOT NULL,
            expires_at   REAL NOT NULL,
            PRIMARY KEY (kind, content_hash)
        );
        CREATE TABLE keys (
            name        TEXT NOT NULL,
            epoch       INTEGER NOT NULL,
            ciphersuite TEXT NOT NULL,
            group_key   BLOB NOT NULL,
            fingerprint TEXT NOT NULL,
            threshold   INTEGER NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('pending', 'active', 'retired')),
            ceremony_id TEXT NOT NULL,
            created_at  REAL NOT NULL,
            PRIMARY KEY (name, epoch)
        );
        """,
    ),
    (
        2,
        """
        CREATE TABLE peer_sequences (
            sender   INTEGER PRIMARY KEY,
            sequence INTEGER NOT NULL
        );
        """,
    ),
    (
        3,
        """
        CREATE TABLE blocks (
            hash      TEXT PRIMARY KEY,
            height    INTEGER NOT NULL,
            previous  TEXT NOT NULL,
            canonical INTEGER NOT NULL,
            seen_at   REAL NOT NULL
        );
        CREATE INDEX blocks_by_height ON blocks (canonical, height);
        CREATE TABLE watched_scripts (
            script     BLOB PRIMARY KEY,
            kind       TEXT NOT NULL CHECK (kind IN ('custody', 'deposit', 'reservoir')),
            label      TEXT NOT NULL,
            tweaks     TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE outputs (
            txid       TEXT NOT NULL,
            vout       INTEGER NOT NULL,
            block_hash TEXT NOT NULL,
            amount     INTEGER NOT NULL,
            script     BLOB NOT NULL,
            PRIMARY KEY (txid, vout, block_hash)
        );
        CREATE TABLE spends (
            txid          TEXT NOT NULL,
            vout          INTEGER NOT NULL,
            block_hash    TEXT NOT NULL,
            spending_txid TEXT NOT NULL,
            PRIMARY KEY (txid, vout, block_hash)
        );
        CREATE TABLE deposits (
            txid        TEXT NOT NULL,
            vout        INTEGER NOT NULL,
            recipient   TEXT NOT NULL,
            amount      INTEGER NOT NULL,
            block_hash  TEXT NOT NULL,
            height      INTEGER NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('confirmed', 'attested', 'reorged')),
            reported_at REAL NOT NULL,
            attested_at REAL,
            PRIMARY KEY (txid, vout)
        );
        CREATE TABLE chain_events (
            kind   TEXT NOT NULL,
            height INTEGER NOT NULL,
            detail TEXT NOT NULL,
            at     REAL NOT NULL
        );
        CREATE TABLE flags (
            name   TEXT PRIMARY KEY,
            value  TEXT NOT NULL,
            reason TEXT NOT NULL,
            at     REAL NOT NULL
        );
        """,
    ),
    (
        4,
        """
        CREATE TABLE attestations (
            sequence   INTEGER PRIMARY KEY,
            txid       TEXT NOT NULL,
            vout       INTEGER NOT NULL,
            message    BLOB NOT NULL,
            signature  BLOB,
            state      TEXT NOT NULL CHECK (state IN ('bound', 'signed')),
            request_id TEXT,
            bound_at   REAL NOT NULL,
            signed_at  REAL,
            UNIQUE (txid, vout)
        );
        """,
    ),
    (
        5,
        """
        CREATE TABLE burns (
            burn_id     TEXT PRIMARY KEY,
            entry       TEXT NOT NULL,
            script      BLOB NOT NULL,
            amount      INTEGER NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('queued', 'bound', 'paid')),
            withdrawal  TEXT,
            received_at REAL NOT NULL,
            paid_txid   TEXT,
            reported    INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX burns_by_state ON burns (state, received_at);
        CREATE TABLE burn_approvals (
            burn_id   TEXT NOT NULL,
            approver  INTEGER NOT NULL,
            signature BLOB NOT NULL,
            at        REAL NOT NULL,
            PRIMARY KEY (burn_id, approver)
        );
        CREATE TABLE withdrawals (
            id               TEXT PRIMARY KEY,
            kind             TEXT NOT NULL CHECK (kind IN ('withdrawal', 'consolidation')),
            burns            TEXT NOT NULL,
            inputs           TEXT NOT NULL,
            amount           INTEGER NOT NULL,
            state            TEXT NOT NULL
                CHECK (state IN ('proposed', 'signed', 'broadcast', 'confirmed', 'conflicted')),
            created_at       REAL NOT NULL,
            broadcast_height INTEGER,
            confirmed_txid   TEXT,
            confirmed_height INTEGER
        );
        CREATE TABLE withdrawal_revisions (
            withdrawal TEXT NOT NULL REFERENCES withdrawals (id),
            revision   INTEGER NOT NULL,
            txid       TEXT NOT NULL,
            fee_rate   REAL NOT NULL,
            unsigned   BLOB NOT NULL,
            proposal   TEXT NOT NULL,
            signed     BLOB,
            PRIMARY KEY (withdrawal, revision)
        );
        CREATE TABLE reserved_inputs (
            txid       TEXT NOT NULL,
            vout       INTEGER NOT NULL,
            withdrawal TEXT NOT NULL REFERENCES withdrawals (id),
            PRIMARY KEY (txid, vout)
        );
        """,
    ),
    (
        6,
        # Keys keep their whole public package (a restore checks a backup against it), and
        # one key name has at most one active epoch. An earlier restore could add an active
        # epoch beside the one a ceremony made: such a row is retired, so the ceremony's
        # key is the active one again.
        """
        ALTER TABLE keys ADD COLUMN verifying_shares TEXT;
        UPDATE keys SET state = 'retired'
         WHERE state = 'active'
           AND ceremony_id NOT IN (SELECT id FROM ceremonies WHERE kind IN ('dkg', 'refresh'))
           AND EXISTS (SELECT 1 FROM keys AS made
                        WHERE made.name = keys.name AND made.state = 'active'
                          AND made.ceremony_id IN
                              (SELECT id FROM ceremonies WHERE kind IN ('dkg', 'refresh')));
        CREATE UNIQUE INDEX keys_one_active ON keys (name) WHERE state = 'active';
        """,
    ),
    (
        7,
        """
        CREATE TABLE spending_transactions (
            txid       TEXT PRIMARY KEY,
            commitment BLOB,
            paid_out   INTEGER NOT NULL
        );
        CREATE TABLE payout_ledger (
            txid        TEXT PRIMARY KEY,
            burns       TEXT NOT NULL,
            source      TEXT NOT NULL,
            recorded_at REAL NOT NULL
        );
        CREATE INDEX spends_by_output ON spends (txid, vout);
        """,
    ),
    (
        8,
        """
        CREATE TABLE operators (
            username    TEXT PRIMARY KEY,
            role        TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'auditor')),
            totp_sealed BLOB NOT NULL,
            disabled    INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
            created_at  REAL NOT NULL,
            created_by  TEXT,
            last_step   INTEGER NOT NULL DEFAULT -1
        );
        """,
    ),
]
