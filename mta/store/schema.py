"""Versioned schema. Each migration runs once, in order, in its own transaction at open.

Tables and the modules that own them (only the owner writes SQL against them):
- domains, authorized_recipients: mta.domains
- api_keys: mta.keys
- credentials: mta.credentials
- messages, recipients: mta.queue (accept enqueues through it, delivery claims and finishes).
  A message's `key` is its storage key; its Message-Id need not be unique (clients resend).
  A batch send's `mime` is a template (options.template) and each recipient row holds its
  `personal` values; `recipients.mime` (a copy per recipient) is only read, for rows written
  before templates (migration 5).
- events: mta.events
- bounces, unsubscribes, complaints: mta.suppressions
- server_secrets: mta.outbound (keys for return-path tags)
- routes: mta.inbound.routes
- inbound, inbound_mime: mta.inbound (received messages: one copy of the content per SMTP
  transaction, a row per routed recipient with its own added headers)
- jobs: mta.jobs (the durable outbox: route forwards, notifications, webhooks). Webhook jobs are
  inserted by the events_webhooks trigger (migration 8) in the event's own transaction.
- webhooks, webhook_triggers: mta.webhooks
- account_settings: mta.account (the HTTP signing key, the tracking-link secret)
- stats_counters, stats_uniques, tags, tag_aggregates, campaigns, campaign_events: mta.stats
  (counters written beside every event by the statements mta.events adds from mta.stats)
- site_slots, site_pace: mta.outbound (connections open to a destination and its pace, counted
  across nodes)
- auth_failures, auth_holds: mta.smtp.guard (AUTH throttles, across nodes)
- periodic_runs: mta.store.periodic (work done once per cluster, whichever node is first)
- mailing_lists, list_members: mta.lists
- list_sends: mta.queue (accept enqueues a send to a list with its message; mta.queue.expansion
  turns it into members' recipient rows, `recipients.mailing_list` naming the list)
- queue_pauses: mta.queue.control (destinations an operator paused; admin data: every node's
  scheduler follows it through admin_version)
- panel_sessions: mta.panel.sessions (signed-in control panel sessions, by a digest of their
  cookie)
- admin_version: bumped by triggers whenever admin data changes, so in-process caches of
  domains and keys notice changes made by another process (the `mta` CLI).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema step in each dialect (the same tables and meaning; types and triggers are
    each engine's own)."""

    sqlite: str
    postgresql: str


_SQLITE: list[str] = [
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
    # 6: several nodes on one database: a lease names the node holding it; destinations'
    # connections and pace, AUTH failures and periodic work are counted site-wide
    """
    ALTER TABLE recipients ADD COLUMN lease_node TEXT NOT NULL DEFAULT '';
    CREATE TABLE site_slots (
        site TEXT NOT NULL,
        slot INTEGER NOT NULL,
        node TEXT NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (site, slot)
    );
    CREATE TABLE site_pace (
        site TEXT PRIMARY KEY,
        next_at REAL NOT NULL DEFAULT 0,
        paused_until REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE auth_failures (
        subject TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX auth_failures_subject ON auth_failures (subject, at);
    CREATE TABLE auth_holds (
        subject TEXT PRIMARY KEY,
        until REAL NOT NULL,
        backoffs INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE periodic_runs (
        name TEXT PRIMARY KEY,
        next_at REAL NOT NULL,
        node TEXT NOT NULL DEFAULT ''
    );
    """,
    # 7: one durable outbox (mta.jobs) for every action that leaves the process: route
    # forwards and store notifications now, webhooks next. A job belongs to an `owner` (e.g.
    # 'inbound:<key>') that removes it with itself; `payload` is its kind's JSON. The
    # inbound_jobs rows move over (ids are not kept; 'rejected', a 406, becomes 'stopped').
    # jobs is owned by mta.jobs; inbound_jobs is gone.
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        owner TEXT NOT NULL DEFAULT '',
        payload BLOB NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0,
        due_at REAL NOT NULL,
        lease_until REAL NOT NULL DEFAULT 0,
        lease_node TEXT NOT NULL DEFAULT '',
        last_error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        finished_at REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_due ON jobs (state, due_at);
    CREATE INDEX jobs_owner ON jobs (owner);
    CREATE INDEX jobs_finished ON jobs (finished_at);
    INSERT INTO jobs (kind, owner, payload, state, attempts, due_at, lease_until, created_at,
                      finished_at)
        SELECT 'inbound.' || kind, 'inbound:' || inbound_key,
               CAST(json_object('inbound', inbound_key, 'target', target, 'route', route_id)
                    AS BLOB),
               CASE state WHEN 'rejected' THEN 'stopped' ELSE state END,
               attempts, due_at, lease_until, created_at,
               CASE state WHEN 'queued' THEN 0 ELSE due_at END
        FROM inbound_jobs ORDER BY id;
    DROP TABLE inbound_jobs;
    """,    # 8: webhooks (mta.webhooks) and their fan-out, account-wide settings (mta.account: the
    # HTTP signing key, the tracking-link secret), each domain's tracking settings. Every
    # committed event becomes one 'webhook' job per configured URL of the hooks it fires
    # (`webhook_triggers` is that mapping, as data) in the event's own transaction, by a
    # trigger: whoever writes an event, its webhooks cannot be forgotten or lost. A job's
    # owner is 'webhook:<webhooks.id>' and its payload the event id. Delivery notifications
    # are posted once ('webhook.once'). Domains' per-domain signing keys give way to the
    # account key (Mailgun signs every post with one key).
    """
    CREATE TABLE webhooks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        domain TEXT NOT NULL,
        name TEXT NOT NULL,
        url TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (domain, name, url)
    );
    CREATE TRIGGER webhooks_ins AFTER INSERT ON webhooks
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER webhooks_upd AFTER UPDATE ON webhooks
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER webhooks_del AFTER DELETE ON webhooks
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER domains_del_webhooks AFTER DELETE ON domains
        BEGIN DELETE FROM webhooks WHERE domain = old.name; END;
    CREATE TABLE webhook_triggers (
        event TEXT NOT NULL,
        severity TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (event, severity, name)
    );
    INSERT INTO webhook_triggers (event, severity, name) VALUES
        ('accepted', '', 'accepted'),
        ('delivered', '', 'delivered'),
        ('delivered', '', 'deliver'),
        ('opened', '', 'opened'),
        ('opened', '', 'open'),
        ('clicked', '', 'clicked'),
        ('clicked', '', 'click'),
        ('unsubscribed', '', 'unsubscribed'),
        ('unsubscribed', '', 'unsubscribe'),
        ('complained', '', 'complained'),
        ('complained', '', 'spam'),
        ('failed', 'temporary', 'temporary_fail'),
        ('failed', 'permanent', 'permanent_fail'),
        ('failed', 'permanent', 'bounce'),
        ('failed', 'permanent', 'drop');
    CREATE TRIGGER events_webhooks AFTER INSERT ON events
    BEGIN
        INSERT INTO jobs (kind, owner, payload, state, due_at, created_at)
            SELECT CASE WHEN w.name IN ('delivered', 'deliver') THEN 'webhook.once'
                        ELSE 'webhook' END,
                   'webhook:' || w.id, CAST('"' || new.id || '"' AS BLOB), 'queued',
                   new.ts, new.ts
            FROM webhook_triggers t JOIN webhooks w ON w.name = t.name
            WHERE t.event = new.event AND t.severity = new.severity AND w.domain = new.domain;
    END;
    CREATE TABLE account_settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TRIGGER account_settings_ins AFTER INSERT ON account_settings
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER account_settings_upd AFTER UPDATE ON account_settings
        BEGIN UPDATE admin_version SET version = version + 1; END;
    ALTER TABLE domains ADD COLUMN track_opens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE domains ADD COLUMN track_opens_top INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE domains ADD COLUMN track_clicks TEXT NOT NULL DEFAULT 'no';
    ALTER TABLE domains ADD COLUMN track_unsubscribes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE domains ADD COLUMN unsubscribe_html_footer TEXT NOT NULL DEFAULT '';
    ALTER TABLE domains ADD COLUMN unsubscribe_text_footer TEXT NOT NULL DEFAULT '';
    ALTER TABLE domains DROP COLUMN signing_key;
    UPDATE domains SET
        unsubscribe_html_footer = '\n<br>\n<p><a href="%unsubscribe_url%">unsubscribe</a></p>\n',
        unsubscribe_text_footer = '\n\nTo unsubscribe click: <%unsubscribe_url%>\n\n';
    """,
    # 9: a tracking hit finds the sent copy it is about (its delivered or accepted event) by
    # message-id and recipient; a list send has a thousand events under one message-id. The
    # Events API's message-id filter uses the first column as it used the index this replaces.
    """
    CREATE INDEX events_message_recipient ON events (message_id, recipient);
    DROP INDEX events_message;
    """,
    # 10: stats (mta.stats). Counters per domain, tag ('t:<tag>') and campaign ('c:<id>')
    # scope, per hour, day and month, one column per Mailgun sub-total; written by the
    # statements mta.stats.counting adds to every event's INSERT, in the same transaction (so
    # a crash can neither lose nor double a count). `stats_uniques` marks the first open and
    # click of each (message, recipient): only the transaction whose event placed the mark
    # counts it unique. Tags (created by sends, within the per-domain limit), their all-time
    # aggregates by country, provider and device, campaigns and the per-event rows their
    # reports group (kept for the campaign retention).
    """
    CREATE TABLE stats_counters (
        domain TEXT NOT NULL,
        scope TEXT NOT NULL,
        resolution TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        accepted_incoming INTEGER NOT NULL DEFAULT 0,
        accepted_outgoing INTEGER NOT NULL DEFAULT 0,
        delivered_smtp INTEGER NOT NULL DEFAULT 0,
        delivered_http INTEGER NOT NULL DEFAULT 0,
        failed_temporary INTEGER NOT NULL DEFAULT 0,
        failed_temporary_espblock INTEGER NOT NULL DEFAULT 0,
        failed_permanent INTEGER NOT NULL DEFAULT 0,
        failed_permanent_bounce INTEGER NOT NULL DEFAULT 0,
        failed_permanent_delayed_bounce INTEGER NOT NULL DEFAULT 0,
        failed_permanent_suppress_bounce INTEGER NOT NULL DEFAULT 0,
        failed_permanent_suppress_unsubscribe INTEGER NOT NULL DEFAULT 0,
        failed_permanent_suppress_complaint INTEGER NOT NULL DEFAULT 0,
        failed_permanent_old INTEGER NOT NULL DEFAULT 0,
        opened INTEGER NOT NULL DEFAULT 0,
        opened_unique INTEGER NOT NULL DEFAULT 0,
        clicked INTEGER NOT NULL DEFAULT 0,
        clicked_unique INTEGER NOT NULL DEFAULT 0,
        unsubscribed INTEGER NOT NULL DEFAULT 0,
        complained INTEGER NOT NULL DEFAULT 0,
        stored INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (domain, scope, resolution, bucket)
    );
    CREATE INDEX stats_counters_account ON stats_counters (scope, resolution, bucket);
    CREATE TABLE stats_uniques (
        domain TEXT NOT NULL,
        message_id TEXT NOT NULL,
        recipient TEXT NOT NULL,
        kind TEXT NOT NULL,
        event_id TEXT NOT NULL,
        ts REAL NOT NULL,
        PRIMARY KEY (domain, message_id, recipient, kind)
    );
    CREATE INDEX stats_uniques_ts ON stats_uniques (ts);
    CREATE TABLE tags (
        domain TEXT NOT NULL,
        tag TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        PRIMARY KEY (domain, tag)
    );
    CREATE TABLE tag_aggregates (
        domain TEXT NOT NULL,
        tag TEXT NOT NULL,
        dimension TEXT NOT NULL,
        key TEXT NOT NULL,
        accepted INTEGER NOT NULL DEFAULT 0,
        delivered INTEGER NOT NULL DEFAULT 0,
        opened INTEGER NOT NULL DEFAULT 0,
        opened_unique INTEGER NOT NULL DEFAULT 0,
        clicked INTEGER NOT NULL DEFAULT 0,
        clicked_unique INTEGER NOT NULL DEFAULT 0,
        unsubscribed INTEGER NOT NULL DEFAULT 0,
        complained INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (domain, tag, dimension, key)
    );
    CREATE TABLE campaigns (
        domain TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (domain, id)
    );
    CREATE TABLE campaign_events (
        seq INTEGER PRIMARY KEY,
        domain TEXT NOT NULL,
        campaign TEXT NOT NULL,
        ts REAL NOT NULL,
        event TEXT NOT NULL,
        recipient TEXT NOT NULL,
        recipient_domain TEXT NOT NULL,
        link TEXT NOT NULL DEFAULT '',
        country TEXT NOT NULL DEFAULT '',
        region TEXT NOT NULL DEFAULT '',
        city TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '[]',
        user_vars TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX campaign_events_campaign ON campaign_events (domain, campaign, ts);
    CREATE INDEX campaign_events_ts ON campaign_events (ts);
    CREATE TRIGGER domains_del_stats AFTER DELETE ON domains
        BEGIN
            DELETE FROM stats_counters WHERE domain = old.name;
            DELETE FROM stats_uniques WHERE domain = old.name;
            DELETE FROM tags WHERE domain = old.name;
            DELETE FROM tag_aggregates WHERE domain = old.name;
            DELETE FROM campaigns WHERE domain = old.name;
            DELETE FROM campaign_events WHERE domain = old.name;
        END;
    """,
    # 11: mailing lists (mta.lists; list_sends: mta.queue). A list is keyed by its address
    # and carries a stable id that its members point at (a rename moves no member). A send
    # to a list is stored once
    # (a template) and a `list_sends` row expands it into recipient rows a chunk of members at
    # a time, its cursor (`after`, the last member queued) moving in the chunk's own
    # transaction; `recipients.mailing_list` names the list a recipient row came from.
    """
    CREATE TABLE mailing_lists (
        address TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        domain TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT '',
        access_level TEXT NOT NULL DEFAULT 'readonly',
        reply_preference TEXT NOT NULL DEFAULT 'list',
        created_at REAL NOT NULL
    );
    CREATE INDEX mailing_lists_domain ON mailing_lists (domain);
    CREATE TABLE list_members (
        list_id TEXT NOT NULL,
        address TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        vars TEXT NOT NULL DEFAULT '{}',
        subscribed INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        PRIMARY KEY (list_id, address)
    );
    CREATE INDEX list_members_subscribed ON list_members (list_id, subscribed, address);
    CREATE TRIGGER mailing_lists_ins AFTER INSERT ON mailing_lists
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER mailing_lists_upd AFTER UPDATE ON mailing_lists
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER mailing_lists_del AFTER DELETE ON mailing_lists
        BEGIN
            UPDATE admin_version SET version = version + 1;
            DELETE FROM list_members WHERE list_id = old.id;
        END;
    CREATE TABLE list_sends (
        id INTEGER PRIMARY KEY,
        message_key TEXT NOT NULL,
        list_id TEXT NOT NULL,
        list_address TEXT NOT NULL,
        after TEXT NOT NULL DEFAULT '',
        queued INTEGER NOT NULL DEFAULT 0,
        due_at REAL NOT NULL,
        lease_until REAL NOT NULL DEFAULT 0,
        lease_node TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX list_sends_due ON list_sends (due_at);
    CREATE INDEX list_sends_message ON list_sends (message_key);
    ALTER TABLE recipients ADD COLUMN mailing_list TEXT;
    CREATE TRIGGER domains_del_lists AFTER DELETE ON domains
        BEGIN DELETE FROM mailing_lists WHERE domain = old.name; END;
    """,
    # 12: queue control (mta.queue.control). A destination (recipient domain) an operator
    # paused, followed by every node's scheduler through admin_version; the index finds a
    # destination's queued rows (the domain: what follows the address's first '@'; a quoted
    # local part holding an '@' is too rare to pay for a column).
    """
    CREATE TABLE queue_pauses (
        destination TEXT PRIMARY KEY,
        paused_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE TRIGGER queue_pauses_ins AFTER INSERT ON queue_pauses
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER queue_pauses_upd AFTER UPDATE ON queue_pauses
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE TRIGGER queue_pauses_del AFTER DELETE ON queue_pauses
        BEGIN UPDATE admin_version SET version = version + 1; END;
    CREATE INDEX recipients_destination
        ON recipients (state, lower(substr(address, instr(address, '@') + 1)));
    """,
    # 13: control panel sign-ins (mta.panel.sessions). Only a digest of the cookie is kept;
    # key_id ties a session to the API key it signed in with (NULL: the admin password), so
    # revoking the key ends it.
    """
    CREATE TABLE panel_sessions (
        token_hash BLOB PRIMARY KEY,
        who TEXT NOT NULL,
        key_id TEXT,
        created_at REAL NOT NULL,
        last_used REAL NOT NULL
    );
    CREATE INDEX panel_sessions_last_used ON panel_sessions (last_used);
    """,
    # 14: events by recipient (the Events API's and the panel's Logs `recipient` filter): with
    # a million events, a search for one address walked the domain's whole month (~300 ms).
    # Suppressions newest first (the panel's pages), without sorting a domain's whole list.
    """
    CREATE INDEX events_domain_recipient ON events (domain, recipient, ts, seq);
    CREATE INDEX bounces_newest ON bounces (domain, created_at, address);
    CREATE INDEX unsubscribes_newest ON unsubscribes (domain, created_at, address);
    CREATE INDEX complaints_newest ON complaints (domain, created_at, address);
    """,
]

_ADMIN_TRIGGER = """
    CREATE TRIGGER {table}_admin AFTER INSERT OR UPDATE OR DELETE ON {table}
        FOR EACH STATEMENT EXECUTE FUNCTION mta_admin_changed();
"""

_POSTGRESQL: list[str] = [
    # 1: foundation. Admin changes bump the version and are pushed to every node (NOTIFY).
    """
    CREATE TABLE admin_version (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        version BIGINT NOT NULL
    );
    INSERT INTO admin_version (id, version) VALUES (1, 0);
    CREATE FUNCTION mta_admin_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE admin_version SET version = version + 1;
        PERFORM pg_notify('mta_admin', '');
        RETURN NULL;
    END $$;
    -- SQLite's instr(), so substring filters are written once for both engines
    CREATE FUNCTION instr(haystack TEXT, needle TEXT) RETURNS INTEGER
        LANGUAGE sql IMMUTABLE STRICT AS 'SELECT strpos(haystack, needle)';

    CREATE TABLE domains (
        name TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL,
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
        dns_checked_at DOUBLE PRECISION,
        dns_results BYTEA
    );

    CREATE TABLE authorized_recipients (
        domain TEXT NOT NULL,
        address TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (domain, address)
    );

    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        secret_hash BYTEA NOT NULL UNIQUE,
        domain TEXT,
        description TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    );

    CREATE TABLE messages (
        key TEXT PRIMARY KEY,
        message_id TEXT NOT NULL,
        domain TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        sender TEXT NOT NULL,
        options BYTEA NOT NULL,
        mime BYTEA
    );
    CREATE INDEX messages_message_id ON messages (message_id);

    CREATE TABLE recipients (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        message_key TEXT NOT NULL,
        address TEXT NOT NULL,
        mime BYTEA,
        user_variables BYTEA,
        state TEXT NOT NULL,
        due_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE INDEX recipients_due ON recipients (state, due_at);
    CREATE INDEX recipients_message ON recipients (message_key);

    CREATE TABLE events (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL,
        domain TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        event TEXT NOT NULL,
        recipient TEXT NOT NULL DEFAULT '',
        message_id TEXT NOT NULL DEFAULT '',
        severity TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '',
        from_addr TEXT NOT NULL DEFAULT '',
        to_addr TEXT NOT NULL DEFAULT '',
        subject TEXT NOT NULL DEFAULT '',
        size BIGINT NOT NULL DEFAULT 0,
        recipients TEXT NOT NULL DEFAULT '',
        attachments TEXT NOT NULL DEFAULT '',
        list TEXT NOT NULL DEFAULT '',
        payload BYTEA NOT NULL
    );
    CREATE INDEX events_domain_ts ON events (domain, ts, seq);
    CREATE INDEX events_message ON events (message_id);
    """
    + "".join(_ADMIN_TRIGGER.format(table=t) for t in ("domains", "authorized_recipients",
                                                       "api_keys")),
    # 2: SMTP credentials
    """
    CREATE TABLE credentials (
        login TEXT PRIMARY KEY,
        domain TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX credentials_domain ON credentials (domain);
    CREATE FUNCTION mta_domain_removed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM credentials WHERE domain = OLD.name;
        RETURN NULL;
    END $$;
    CREATE TRIGGER domains_removed AFTER DELETE ON domains
        FOR EACH ROW EXECUTE FUNCTION mta_domain_removed();
    """
    + _ADMIN_TRIGGER.format(table="credentials"),
    # 3: outbound delivery and suppressions
    """
    ALTER TABLE recipients ADD COLUMN to_header TEXT;
    CREATE INDEX messages_created ON messages (created_at);

    CREATE TABLE bounces (
        domain TEXT NOT NULL,
        address TEXT NOT NULL,
        code TEXT NOT NULL,
        error TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (domain, address)
    );
    CREATE TABLE unsubscribes (
        domain TEXT NOT NULL,
        address TEXT NOT NULL,
        tags BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (domain, address)
    );
    CREATE TABLE complaints (
        domain TEXT NOT NULL,
        address TEXT NOT NULL,
        count INTEGER NOT NULL DEFAULT 1,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (domain, address)
    );
    CREATE OR REPLACE FUNCTION mta_domain_removed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM credentials WHERE domain = OLD.name;
        DELETE FROM bounces WHERE domain = OLD.name;
        DELETE FROM unsubscribes WHERE domain = OLD.name;
        DELETE FROM complaints WHERE domain = OLD.name;
        RETURN NULL;
    END $$;

    CREATE TABLE server_secrets (
        name TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );
    """,
    # 4: inbound: routes, received messages and the jobs their actions become.
    # `rowid` orders routes of one priority by creation, as SQLite's implicit rowid does.
    """
    ALTER TABLE domains ADD COLUMN signing_key TEXT NOT NULL DEFAULT '';
    UPDATE domains SET signing_key = replace(gen_random_uuid()::text, '-', '');

    CREATE TABLE routes (
        id TEXT PRIMARY KEY,
        priority INTEGER NOT NULL,
        description TEXT NOT NULL,
        expression TEXT NOT NULL,
        actions BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        rowid BIGINT GENERATED BY DEFAULT AS IDENTITY UNIQUE
    );

    CREATE TABLE inbound_mime (
        key TEXT PRIMARY KEY,
        mime BYTEA NOT NULL
    );
    CREATE TABLE inbound (
        key TEXT PRIMARY KEY,
        domain TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        mime_key TEXT NOT NULL,
        prefix BYTEA NOT NULL,
        stored_until DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE INDEX inbound_stored ON inbound (stored_until);
    CREATE INDEX inbound_mime_key ON inbound (mime_key);

    CREATE TABLE inbound_jobs (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        inbound_key TEXT NOT NULL,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        route_id TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0,
        due_at DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX inbound_jobs_due ON inbound_jobs (state, due_at);
    CREATE INDEX inbound_jobs_message ON inbound_jobs (inbound_key);
    """
    + _ADMIN_TRIGGER.format(table="routes"),
    # 5: batch sends stored once as a template; whether a received From was authenticated
    """
    ALTER TABLE recipients ADD COLUMN personal BYTEA;
    ALTER TABLE inbound ADD COLUMN from_aligned INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: several nodes on one database: a lease names the node holding it; destinations'
    # connections and pace, AUTH failures and periodic work are counted site-wide
    """
    ALTER TABLE recipients ADD COLUMN lease_node TEXT NOT NULL DEFAULT '';
    CREATE TABLE site_slots (
        site TEXT NOT NULL,
        slot INTEGER NOT NULL,
        node TEXT NOT NULL,
        until DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (site, slot)
    );
    CREATE TABLE site_pace (
        site TEXT PRIMARY KEY,
        next_at DOUBLE PRECISION NOT NULL DEFAULT 0,
        paused_until DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE TABLE auth_failures (
        subject TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX auth_failures_subject ON auth_failures (subject, at);
    CREATE TABLE auth_holds (
        subject TEXT PRIMARY KEY,
        until DOUBLE PRECISION NOT NULL,
        backoffs INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE periodic_runs (
        name TEXT PRIMARY KEY,
        next_at DOUBLE PRECISION NOT NULL,
        node TEXT NOT NULL DEFAULT ''
    );
    """,
    # 7: one durable outbox (mta.jobs); the inbound_jobs rows move over (see SQLite's 7)
    """
    CREATE TABLE jobs (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        kind TEXT NOT NULL,
        owner TEXT NOT NULL DEFAULT '',
        payload BYTEA NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued',
        attempts INTEGER NOT NULL DEFAULT 0,
        due_at DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        lease_node TEXT NOT NULL DEFAULT '',
        last_error TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_due ON jobs (state, due_at);
    CREATE INDEX jobs_owner ON jobs (owner);
    CREATE INDEX jobs_finished ON jobs (finished_at);
    INSERT INTO jobs (kind, owner, payload, state, attempts, due_at, lease_until, created_at,
                      finished_at)
        SELECT 'inbound.' || kind, 'inbound:' || inbound_key,
               convert_to(json_build_object('inbound', inbound_key, 'target', target,
                                            'route', route_id)::text, 'UTF8'),
               CASE state WHEN 'rejected' THEN 'stopped' ELSE state END,
               attempts, due_at, lease_until, created_at,
               CASE state WHEN 'queued' THEN 0 ELSE due_at END
        FROM inbound_jobs ORDER BY id;
    DROP TABLE inbound_jobs;
    """,    # 8: as SQLite's 8
    """
    CREATE TABLE webhooks (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        domain TEXT NOT NULL,
        name TEXT NOT NULL,
        url TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        UNIQUE (domain, name, url)
    );
    CREATE FUNCTION mta_domain_webhooks_gone() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM webhooks WHERE domain = OLD.name;
        RETURN NULL;
    END $$;
    CREATE TRIGGER domains_del_webhooks AFTER DELETE ON domains
        FOR EACH ROW EXECUTE FUNCTION mta_domain_webhooks_gone();
    CREATE TABLE webhook_triggers (
        event TEXT NOT NULL,
        severity TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (event, severity, name)
    );
    INSERT INTO webhook_triggers (event, severity, name) VALUES
        ('accepted', '', 'accepted'),
        ('delivered', '', 'delivered'),
        ('delivered', '', 'deliver'),
        ('opened', '', 'opened'),
        ('opened', '', 'open'),
        ('clicked', '', 'clicked'),
        ('clicked', '', 'click'),
        ('unsubscribed', '', 'unsubscribed'),
        ('unsubscribed', '', 'unsubscribe'),
        ('complained', '', 'complained'),
        ('complained', '', 'spam'),
        ('failed', 'temporary', 'temporary_fail'),
        ('failed', 'permanent', 'permanent_fail'),
        ('failed', 'permanent', 'bounce'),
        ('failed', 'permanent', 'drop');
    CREATE FUNCTION mta_event_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO jobs (kind, owner, payload, state, due_at, created_at)
            SELECT CASE WHEN w.name IN ('delivered', 'deliver') THEN 'webhook.once'
                        ELSE 'webhook' END,
                   'webhook:' || w.id, convert_to('"' || NEW.id || '"', 'UTF8'), 'queued',
                   NEW.ts, NEW.ts
            FROM webhook_triggers t JOIN webhooks w ON w.name = t.name
            WHERE t.event = NEW.event AND t.severity = NEW.severity AND w.domain = NEW.domain;
        RETURN NULL;
    END $$;
    CREATE TRIGGER events_webhooks AFTER INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION mta_event_webhooks();
    CREATE TABLE account_settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ALTER TABLE domains ADD COLUMN track_opens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE domains ADD COLUMN track_opens_top INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE domains ADD COLUMN track_clicks TEXT NOT NULL DEFAULT 'no';
    ALTER TABLE domains ADD COLUMN track_unsubscribes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE domains ADD COLUMN unsubscribe_html_footer TEXT NOT NULL DEFAULT '';
    ALTER TABLE domains ADD COLUMN unsubscribe_text_footer TEXT NOT NULL DEFAULT '';
    ALTER TABLE domains DROP COLUMN signing_key;
    UPDATE domains SET
        unsubscribe_html_footer = '\n<br>\n<p><a href="%unsubscribe_url%">unsubscribe</a></p>\n',
        unsubscribe_text_footer = '\n\nTo unsubscribe click: <%unsubscribe_url%>\n\n';
    """
    + _ADMIN_TRIGGER.format(table="webhooks")
    + _ADMIN_TRIGGER.format(table="account_settings"),
    # 9: as SQLite's 9
    """
    CREATE INDEX events_message_recipient ON events (message_id, recipient);
    DROP INDEX events_message;
    """,
    # 10: as SQLite's 10
    """
    CREATE TABLE stats_counters (
        domain TEXT NOT NULL,
        scope TEXT NOT NULL,
        resolution TEXT NOT NULL,
        bucket BIGINT NOT NULL,
        accepted_incoming BIGINT NOT NULL DEFAULT 0,
        accepted_outgoing BIGINT NOT NULL DEFAULT 0,
        delivered_smtp BIGINT NOT NULL DEFAULT 0,
        delivered_http BIGINT NOT NULL DEFAULT 0,
        failed_temporary BIGINT NOT NULL DEFAULT 0,
        failed_temporary_espblock BIGINT NOT NULL DEFAULT 0,
        failed_permanent BIGINT NOT NULL DEFAULT 0,
        failed_permanent_bounce BIGINT NOT NULL DEFAULT 0,
        failed_permanent_delayed_bounce BIGINT NOT NULL DEFAULT 0,
        failed_permanent_suppress_bounce BIGINT NOT NULL DEFAULT 0,
        failed_permanent_suppress_unsubscribe BIGINT NOT NULL DEFAULT 0,
        failed_permanent_suppress_complaint BIGINT NOT NULL DEFAULT 0,
        failed_permanent_old BIGINT NOT NULL DEFAULT 0,
        opened BIGINT NOT NULL DEFAULT 0,
        opened_unique BIGINT NOT NULL DEFAULT 0,
        clicked BIGINT NOT NULL DEFAULT 0,
        clicked_unique BIGINT NOT NULL DEFAULT 0,
        unsubscribed BIGINT NOT NULL DEFAULT 0,
        complained BIGINT NOT NULL DEFAULT 0,
        stored BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (domain, scope, resolution, bucket)
    );
    CREATE INDEX stats_counters_account ON stats_counters (scope, resolution, bucket);
    CREATE TABLE stats_uniques (
        domain TEXT NOT NULL,
        message_id TEXT NOT NULL,
        recipient TEXT NOT NULL,
        kind TEXT NOT NULL,
        event_id TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (domain, message_id, recipient, kind)
    );
    CREATE INDEX stats_uniques_ts ON stats_uniques (ts);
    CREATE TABLE tags (
        domain TEXT NOT NULL,
        tag TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        first_seen DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (domain, tag)
    );
    CREATE TABLE tag_aggregates (
        domain TEXT NOT NULL,
        tag TEXT NOT NULL,
        dimension TEXT NOT NULL,
        key TEXT NOT NULL,
        accepted BIGINT NOT NULL DEFAULT 0,
        delivered BIGINT NOT NULL DEFAULT 0,
        opened BIGINT NOT NULL DEFAULT 0,
        opened_unique BIGINT NOT NULL DEFAULT 0,
        clicked BIGINT NOT NULL DEFAULT 0,
        clicked_unique BIGINT NOT NULL DEFAULT 0,
        unsubscribed BIGINT NOT NULL DEFAULT 0,
        complained BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (domain, tag, dimension, key)
    );
    CREATE TABLE campaigns (
        domain TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (domain, id)
    );
    CREATE TABLE campaign_events (
        seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        domain TEXT NOT NULL,
        campaign TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        event TEXT NOT NULL,
        recipient TEXT NOT NULL,
        recipient_domain TEXT NOT NULL,
        link TEXT NOT NULL DEFAULT '',
        country TEXT NOT NULL DEFAULT '',
        region TEXT NOT NULL DEFAULT '',
        city TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '[]',
        user_vars TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX campaign_events_campaign ON campaign_events (domain, campaign, ts);
    CREATE INDEX campaign_events_ts ON campaign_events (ts);
    CREATE FUNCTION mta_domain_stats_gone() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM stats_counters WHERE domain = OLD.name;
        DELETE FROM stats_uniques WHERE domain = OLD.name;
        DELETE FROM tags WHERE domain = OLD.name;
        DELETE FROM tag_aggregates WHERE domain = OLD.name;
        DELETE FROM campaigns WHERE domain = OLD.name;
        DELETE FROM campaign_events WHERE domain = OLD.name;
        RETURN NULL;
    END $$;
    CREATE TRIGGER domains_del_stats AFTER DELETE ON domains
        FOR EACH ROW EXECUTE FUNCTION mta_domain_stats_gone();
    """,
    # 11: as SQLite's 11
    """
    CREATE TABLE mailing_lists (
        address TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        domain TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT '',
        access_level TEXT NOT NULL DEFAULT 'readonly',
        reply_preference TEXT NOT NULL DEFAULT 'list',
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX mailing_lists_domain ON mailing_lists (domain);
    CREATE TABLE list_members (
        list_id TEXT NOT NULL,
        address TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        vars TEXT NOT NULL DEFAULT '{}',
        subscribed INTEGER NOT NULL DEFAULT 1,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (list_id, address)
    );
    CREATE INDEX list_members_subscribed ON list_members (list_id, subscribed, address);
    CREATE TABLE list_sends (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        message_key TEXT NOT NULL,
        list_id TEXT NOT NULL,
        list_address TEXT NOT NULL,
        after TEXT NOT NULL DEFAULT '',
        queued BIGINT NOT NULL DEFAULT 0,
        due_at DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        lease_node TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX list_sends_due ON list_sends (due_at);
    CREATE INDEX list_sends_message ON list_sends (message_key);
    ALTER TABLE recipients ADD COLUMN mailing_list TEXT;
    CREATE FUNCTION mta_list_gone() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM list_members WHERE list_id = OLD.id;
        RETURN NULL;
    END $$;
    CREATE TRIGGER mailing_lists_del_members AFTER DELETE ON mailing_lists
        FOR EACH ROW EXECUTE FUNCTION mta_list_gone();
    CREATE FUNCTION mta_domain_lists_gone() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM mailing_lists WHERE domain = OLD.name;
        RETURN NULL;
    END $$;
    CREATE TRIGGER domains_del_lists AFTER DELETE ON domains
        FOR EACH ROW EXECUTE FUNCTION mta_domain_lists_gone();
    """
    + _ADMIN_TRIGGER.format(table="mailing_lists"),
    # 12: as SQLite's 12
    """
    CREATE TABLE queue_pauses (
        destination TEXT PRIMARY KEY,
        paused_at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX recipients_destination
        ON recipients (state, lower(substr(address, instr(address, '@') + 1)));
    """
    + _ADMIN_TRIGGER.format(table="queue_pauses"),
    # 13: as SQLite's 13
    """
    CREATE TABLE panel_sessions (
        token_hash BYTEA PRIMARY KEY,
        who TEXT NOT NULL,
        key_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        last_used DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX panel_sessions_last_used ON panel_sessions (last_used);
    """,
    # 14: as SQLite's 14
    """
    CREATE INDEX events_domain_recipient ON events (domain, recipient, ts, seq);
    CREATE INDEX bounces_newest ON bounces (domain, created_at, address);
    CREATE INDEX unsubscribes_newest ON unsubscribes (domain, created_at, address);
    CREATE INDEX complaints_newest ON complaints (domain, created_at, address);
    """,
]

MIGRATIONS: list[Migration] = [
    Migration(sqlite, postgresql) for sqlite, postgresql in zip(_SQLITE, _POSTGRESQL, strict=True)
]
