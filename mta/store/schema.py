"""Versioned schema. Each migration runs once, in order, in its own transaction at open.

Tables and the modules that own them (only the owner writes SQL against them):
- domains, authorized_recipients: mta.domains
- api_keys: mta.keys
- credentials: mta.credentials
- messages, recipients: mta.accept (writes), the outbound scheduler (delivery state).
  A message's `key` is its storage key; its Message-Id need not be unique (clients resend).
  A batch send's `mime` is a template (options.template) and each recipient row holds its
  `personal` values; `recipients.mime` (a copy per recipient) is only read, for rows written
  before templates (migration 5).
- events: mta.events
- bounces, unsubscribes, complaints: mta.suppressions
- server_secrets: mta.outbound (keys for return-path tags)
- routes: mta.inbound.routes
- inbound, inbound_mime, inbound_jobs: mta.inbound (received messages: one copy of the content
  per SMTP transaction, a row per routed recipient with its own added headers, and the jobs of
  their actions)
- admin_version: bumped by triggers whenever admin data changes, so in-process caches of
  domains and keys notice changes made by another process (the `mta` CLI).
"""

MIGRATIONS: list[str] = [
    # 1: foundation
    """
    CREATE TABLE admin_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO admin_version (id, version) VALUES (1, 0);

    CREATE TABLE domains (
        name TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        type TEXT NOT NULL,
        state TEXT NOT NULL,
        spam_action TEXT NOT NULL DEFAULT 'disabled',
        wildcard INTEGER NOT NULL DEFAULT 0,
        require_tls INTEGER NOT NULL DEFAULT 0,
        skip_verification INTEGER NOT NULL DEFAULT 0,
        web_prefix TEXT NOT NULL DEFAULT 'email',
        web_scheme TEXT NOT NULL DEFAULT 'http',
        dkim_selector TEXT NOT NULL,
        dkim_private_key TEXT NOT NULL,
        dkim_public_key TEXT NOT NULL,
        dns_checked_at REAL,
        dns_results BLOB
    );

    CREATE TABLE authorized_recipients (
        domain TEXT NOT NULL,
        address TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (domain, address)
    );

    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        secret_hash BLOB NOT NULL UNIQUE,
        domain TEXT,
        description TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        revoked_at REAL
    );

    CREATE TABLE messages (
        key TEXT PRIMARY KEY,
        message_id TEXT NOT NULL,
        domain TEXT NOT NULL,
        created_at REAL NOT NULL,
        sender TEXT NOT NULL,
        options BLOB NOT NULL,
        mime BLOB
    );

    CREATE INDEX messages_message_id ON messages (message_id);

    CREATE TABLE recipients (
        id INTEGER PRIMARY KEY,
        message_key TEXT NOT NULL,
        address TEXT NOT NULL,
        mime BLOB,
        user_variables BLOB,
        state TEXT NOT NULL,
        due_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_until REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX recipients_due ON recipients (state, due_at);
    CREATE INDEX recipients_message ON recipients (message_key);

    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        domain TEXT NOT NULL,
        ts REAL NOT NULL,
        event TEXT NOT NULL,
        recipient TEXT NOT NULL DEFAULT '',
        message_id TEXT NOT NULL DEFAULT '',
        severity TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '',
        from_addr TEXT NOT NULL DEFAULT '',
        to_addr TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL DEFAULT '',
        size INTEGER NOT NULL DEFAULT 0,
        recipients TEXT NOT NULL DEFAULT '',
        attachments TEXT NOT NULL DEFAULT '',
        list TEXT NOT NULL DEFAULT '',
        payload BLOB NOT NULL
    );
    CREATE INDEX events_domain_ts ON events (domain, ts, seq);
    CREATE INDEX events_message ON events (message_id);

    CREATE TRIGGER domains_ins AFTER INSERT ON domains
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER domains_upd AFTER UPDATE ON domains
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER domains_del AFTER DELETE ON domains
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER authrcpt_ins AFTER INSERT ON authorized_recipients
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER authrcpt_del AFTER DELETE ON authorized_recipients
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER keys_ins AFTER INSERT ON api_keys
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER keys_upd AFTER UPDATE ON api_keys
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER keys_del AFTER DELETE ON api_keys
        BEGIN UPDATE admin_version SET version = version + 1; END;
    """,
    # 2: SMTP credentials
    """
    CREATE TABLE credentials (
        login TEXT PRIMARY KEY,
        domain TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX credentials_domain ON credentials (domain);
    CREATE TRIGGER credentials_ins AFTER INSERT ON credentials
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER credentials_upd AFTER UPDATE ON credentials
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER credentials_del AFTER DELETE ON credentials
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER domains_del_credentials AFTER DELETE ON domains
        BEGIN DELETE FROM credentials WHERE domain = old.name; END;
    """,
    # 3: outbound delivery and suppressions
    """
    ALTER TABLE recipients ADD COLUMN to_header TEXT;
    CREATE INDEX messages_created ON messages (created_at);

    CREATE TABLE bounces (
        domain TEXT NOT NULL,
        address TEXT NOT NULL,
        code TEXT NOT NULL,
        error TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (domain, address)
    );
    CREATE TABLE unsubscribes (
        domain TEXT NOT NULL,
        address TEXT NOT NULL,
        tags BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (domain, address)
    );
    CREATE TABLE complaints (
        domain TEXT NOT NULL,
        address TEXT NOT NULL,
        count INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        PRIMARY KEY (domain, address)
    );
    CREATE TRIGGER domains_del_suppressions AFTER DELETE ON domains
        BEGIN
            DELETE FROM bounces WHERE domain = old.name;
            DELETE FROM unsubscribes WHERE domain = old.name;
            DELETE FROM complaints WHERE domain = old.name;
        END;

    CREATE TABLE server_secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    """,
    # 4: inbound: routes, received messages and the jobs their actions become
    """
    ALTER TABLE domains ADD COLUMN signing_key TEXT NOT NULL DEFAULT '';
    UPDATE domains SET signing_key = lower(hex(randomblob(16)));

    CREATE TABLE routes (
        id TEXT PRIMARY KEY,
        priority INTEGER NOT NULL,
        description TEXT NOT NULL,
        expression TEXT NOT NULL,
        actions BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TRIGGER routes_ins AFTER INSERT ON routes
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER routes_upd AFTER UPDATE ON routes
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER routes_del AFTER DELETE ON routes
        BEGIN UPDATE admin_version SET version = version + 1; END;

    CREATE TABLE inbound_mime (
        key TEXT PRIMARY KEY,
        mime BLOB NOT NULL
    );
    CREATE TABLE inbound (
        key TEXT PRIMARY KEY,
        domain TEXT NOT NULL,
        received_at REAL NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        mime_key TEXT NOT NULL,
        prefix BLOB NOT NULL,
        stored_until REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX inbound_stored ON inbound (stored_until);
    CREATE INDEX inbound_mime_key ON inbound (mime_key);

    CREATE TABLE inbound_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        inbound_key TEXT NOT NULL,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        route_id TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0,
        due_at REAL NOT NULL,
        lease_until REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE INDEX inbound_jobs_due ON inbound_jobs (state, due_at);
    CREATE INDEX inbound_jobs_message ON inbound_jobs (inbound_key);
    """,
    # 5: a batch send is stored once, as a template; each recipient keeps its own values
    # and a received message records whether its From was authenticated (forwards sign it)
    """
    ALTER TABLE recipients ADD COLUMN personal BLOB;
    ALTER TABLE inbound ADD COLUMN from_aligned INTEGER NOT NULL DEFAULT 0;
    """,
]
