//! The PostgreSQL journal's schema, created and migrated at start-up by numbered migrations.
//!
//! Everything lives in the schema `sdm`. `sdm.schema_version` has one row per applied
//! migration. Start-up runs in one transaction under a transaction-scoped advisory lock (so two
//! engines starting together migrate once; the lock ends with the transaction and cannot
//! outlive its session): a database whose newest version is above [`SCHEMA_VERSION`] is
//! refused, the transaction rolled back, nothing written; missing migrations are applied in
//! order, each recording its version.

use tokio_postgres::Client;

use super::pg_conn::Fail;

/// The newest schema version this client knows.
pub const SCHEMA_VERSION: i32 = 1;

/// Key of the advisory lock that serializes migrations ("sdm journal" in ASCII).
const MIGRATION_LOCK: i64 = 0x73_646d_6a6f_7572;

/// Migrations in order: (version, description, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "operations with owner leases, records by sequence",
    r#"
CREATE TABLE sdm.operations (
    op          uuid PRIMARY KEY,
    image       uuid NOT NULL,
    kind        text NOT NULL,
    -- The engine that drives the operation, its ownership epoch (every write is conditional
    -- on it) and when its lease ends (the database's clock).
    owner       text NOT NULL,
    epoch       bigint NOT NULL,
    expires_at  timestamptz NOT NULL,
    -- The sequence number of the operation's next record.
    next_seq    integer NOT NULL,
    ended       boolean NOT NULL DEFAULT false,
    outcome     text,
    -- Claims of this operation from another engine (expired or released).
    takeovers   integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- One unfinished operation per image: a second engine's move of the same disk is refused.
CREATE UNIQUE INDEX operations_one_active_per_image ON sdm.operations (image) WHERE NOT ended;
CREATE INDEX operations_unfinished ON sdm.operations (created_at) WHERE NOT ended;

CREATE TABLE sdm.records (
    op          uuid NOT NULL REFERENCES sdm.operations (op),
    seq         integer NOT NULL,
    -- Who wrote it, at which epoch.
    epoch       bigint NOT NULL,
    owner       text NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    -- The journal entry, the same JSON the file journal writes on its lines.
    entry       jsonb NOT NULL,
    PRIMARY KEY (op, seq)
);
"#,
)];

/// Creates or migrates the schema; refuses (writing nothing) a database newer than this client.
pub(super) async fn migrate(c: &mut Client) -> Result<(), MigrateError> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS sdm;
         CREATE TABLE IF NOT EXISTS sdm.schema_version (
             version     integer PRIMARY KEY,
             description text NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM sdm.schema_version",
            &[],
        )
        .await?;
    let found: i32 = row.get(0);
    if found > SCHEMA_VERSION {
        tx.rollback().await?;
        return Err(MigrateError::TooNew(found));
    }
    for (version, description, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        tracing::info!(version, description, "migrating the journal database");
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO sdm.schema_version (version, description) VALUES ($1, $2)",
            &[version, description],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Why a migration did not happen.
pub(super) enum MigrateError {
    /// The database's schema is newer than this client (version found).
    TooNew(i32),
    /// The database failed.
    Fail(Fail),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> MigrateError {
        MigrateError::Fail(e.into())
    }
}
