//! The PostgreSQL journal's reads that take nothing up: what may be claimed, what holds an
//! image, the listing for inspection; and the pruning of ended operations.

use sdm_proto::Uuid;
use tokio_postgres::types::Json;

use super::error::JournalError;
use super::pg::{sdm_uuid, uuid, Inner};
use super::pg_conn::{db_once, db_retrying, Fail};
use super::record::Entry;
use super::store::{Listed, Listing};

fn listed(r: &tokio_postgres::Row) -> Listed {
    Listed {
        op: sdm_uuid(r.get(0)),
        owner: Some(r.get(1)),
        epoch: r.get::<_, i64>(2) as u64,
        expires_in_ms: Some(r.get(3)),
    }
}

impl Inner {
    /// Unfinished operations whose lease expired (or that this engine holds), oldest first.
    pub(super) async fn claimable(&self) -> Result<Vec<Uuid>, JournalError> {
        let rows = db_retrying!(&self.conn, "listing claimable operations", |c| {
            c.query(
                "SELECT op FROM sdm.operations
                 WHERE NOT ended AND (expires_at <= now() OR owner = $1)
                 ORDER BY created_at",
                &[&self.owner],
            )
            .await
            .map_err(Fail::from)
        })?;
        Ok(rows.iter().map(|r| sdm_uuid(r.get(0))).collect())
    }

    /// The unfinished operation of `image`, if any.
    pub(super) async fn in_progress(&self, image: &Uuid) -> Result<Option<Listed>, JournalError> {
        let image_u = uuid(image);
        let row = db_retrying!(&self.conn, "looking up an image's operation", |c| {
            c.query_opt(
                "SELECT op, owner, epoch, (extract(epoch FROM expires_at - now()) * 1000)::bigint
                 FROM sdm.operations WHERE image = $1 AND NOT ended",
                &[&image_u],
            )
            .await
            .map_err(Fail::from)
        })?;
        Ok(row.as_ref().map(listed))
    }

    /// Every unfinished operation with its owner, and their records.
    pub(super) async fn list(&self) -> Result<Listing, JournalError> {
        let (ops, recs) = db_retrying!(&self.conn, "listing operations", |c| {
            let ops = c
                .query(
                    "SELECT op, owner, epoch, (extract(epoch FROM expires_at - now()) * 1000)::bigint
                     FROM sdm.operations WHERE NOT ended ORDER BY created_at",
                    &[],
                )
                .await?;
            let recs = c
                .query(
                    "SELECT r.entry FROM sdm.records r JOIN sdm.operations o USING (op)
                     WHERE NOT o.ended ORDER BY o.created_at, r.seq",
                    &[],
                )
                .await?;
            Ok((ops, recs))
        })?;
        let entries = recs.iter().map(|r| r.get::<_, Json<Entry>>(0).0).collect();
        Ok((ops.iter().map(listed).collect(), entries))
    }

    /// Deletes operations that ended before `older_than` ago (the database's clock) and their
    /// records, in one transaction: an ended operation never changes again, so nobody can be
    /// writing to what goes.
    pub(super) async fn prune(&self, older_than: std::time::Duration) -> Result<u64, JournalError> {
        let secs = older_than.as_secs_f64();
        db_retrying!(&self.conn, "pruning ended operations", |c| {
            let tx = c.transaction().await?;
            tx.execute(
                "DELETE FROM sdm.records r USING sdm.operations o
                 WHERE r.op = o.op AND o.ended
                   AND o.updated_at < now() - make_interval(secs => $1)",
                &[&secs],
            )
            .await?;
            let n = tx
                .execute(
                    "DELETE FROM sdm.operations
                     WHERE ended AND updated_at < now() - make_interval(secs => $1)",
                    &[&secs],
                )
                .await?;
            tx.commit().await?;
            Ok(n)
        })
    }
}
