//! The leader lease and the cluster's members (decision 0038). One lease
//! row names the process that runs the singleton jobs (maintenance, CRL
//! refresh, org key renewal, scheduled state backups) and carries an epoch,
//! the fencing token: it grows whenever another process takes the lease, and
//! every write of a singleton job checks it in its own transaction
//! ([`Store::fenced`]), so a leader that was paused past its lease writes
//! nothing once another took over.
//!
//! Time: on PostgreSQL the lease runs on the database's clock
//! (`clock_timestamp()`), so nodes whose clocks drift agree on when it
//! expires; on SQLite (one appliance, always the leader) on the store's
//! clock. Acquiring and renewing is one UPDATE of the row, never a session
//! advisory lock (those break behind PgBouncer's transaction pooling).

use super::db::{Pool, Row, Tx, query};
use super::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// The lease row of the singleton jobs.
const LEADER: &str = "leader";

/// The database clock in unix milliseconds (PostgreSQL).
const PG_NOW_MS: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// A leader's fencing token: the process holding the lease and the lease's
/// epoch when it took it. A store handle carrying one
/// ([`Store::fenced`]) checks it in every write transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    instance: Arc<str>,
    epoch: i64,
}

impl Fence {
    /// The lease epoch this fence holds.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }
}

/// What this node is, as far as its lease task knows.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum NodeRole {
    /// Not (or no longer) holding the lease: no singleton job runs here.
    #[default]
    Follower,
    /// Holding the lease: the singleton jobs run here, their writes fenced
    /// with this token.
    Leader(Fence),
}

impl NodeRole {
    /// "leader" or "follower".
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeRole::Follower => "follower",
            NodeRole::Leader(_) => "leader",
        }
    }
}

/// The lease row as read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LeaseRecord {
    /// Node id of the holder ("" before anyone took it).
    pub holder: String,
    /// The fencing token: grows whenever another process takes the lease.
    pub epoch: i64,
    /// End of the lease (unix ms, lease clock).
    pub expires_at: i64,
}

/// A member of the cluster as its last heartbeat left it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemberRecord {
    /// Node id.
    pub node: String,
    /// "leader" or "follower", as the node saw itself.
    pub role: String,
    /// The lease epoch it held as leader, or the one it last saw.
    pub epoch: i64,
    /// When its current process started (unix ms, lease clock).
    pub started_at: i64,
    /// Its last heartbeat (unix ms, lease clock).
    pub last_heartbeat: i64,
}

/// The lease and the members, read together with the lease clock's now.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClusterView {
    /// Now on the lease clock (unix ms).
    pub now: i64,
    /// The leader lease.
    pub lease: LeaseRecord,
    /// Every node that ever sent a heartbeat, by node id.
    pub members: Vec<MemberRecord>,
}

impl ClusterView {
    /// Whether the lease is held by someone right now.
    pub fn lease_live(&self) -> bool {
        !self.lease.holder.is_empty() && self.lease.expires_at > self.now
    }

    /// The role `node` has by the lease row alone (`orgkey cluster status`
    /// run beside it): leader while it holds a live lease.
    pub fn role_of(&self, node: &str) -> &'static str {
        if self.lease_live() && self.lease.holder == node {
            "leader"
        } else {
            "follower"
        }
    }

    /// `node` (`id`, `role`, `epoch`), `lease` and `members` as `/v1/status`
    /// shows them to admins and `orgkey cluster status --json` prints them.
    /// Times are RFC 3339 on the lease clock; `heartbeat_age_ms` is measured
    /// on it too, so it does not depend on the reader's clock.
    pub fn status_json(
        &self,
        node: &str,
        role: &str,
        epoch: i64,
    ) -> serde_json::Map<String, serde_json::Value> {
        let time = |ms: i64| {
            let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            humantime::format_rfc3339_millis(t).to_string()
        };
        let members: Vec<_> = self
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.node,
                    "role": m.role,
                    "epoch": m.epoch,
                    "started_at": time(m.started_at),
                    "last_heartbeat": time(m.last_heartbeat),
                    "heartbeat_age_ms": (self.now - m.last_heartbeat).max(0),
                })
            })
            .collect();
        let mut out = serde_json::Map::new();
        out.insert(
            "node".into(),
            serde_json::json!({ "id": node, "role": role, "epoch": epoch }),
        );
        out.insert(
            "lease".into(),
            serde_json::json!({
                "holder": (!self.lease.holder.is_empty()).then_some(&self.lease.holder),
                "epoch": self.lease.epoch,
                "expires_at": time(self.lease.expires_at),
                "live": self.lease_live(),
            }),
        );
        out.insert("members".into(), members.into());
        out
    }
}

/// A random id for this process's claim on the lease: a restarted node
/// is another process, and two processes given the same node id by mistake
/// never share the lease.
pub fn new_instance() -> String {
    use rand::Rng;
    let bytes: [u8; 8] = rand::rng().random();
    hex::encode(bytes)
}

impl Store {
    /// Now on the lease clock, for SQLite (the store's clock), in ms.
    fn lease_clock_ms(&self) -> i64 {
        self.clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    /// Takes or renews the leader lease for `instance` (of node `node`) for
    /// `ttl`, in one statement: it succeeds when this process holds it
    /// already, when it has expired, or with `reclaim` (a node's first
    /// attempt after its start) when the holder has this node id (a leader
    /// restarted after a crash takes its lease back without waiting it
    /// out). The epoch grows when the holding process changes. Returns the
    /// fence when this process holds the lease afterwards.
    pub async fn acquire_lease(
        &self,
        node: &str,
        instance: &str,
        ttl: Duration,
        reclaim: bool,
    ) -> Result<Option<Fence>, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let sql = |now: &str| {
            format!(
                "UPDATE cluster_lease SET \
                 epoch = CASE WHEN instance = $1 THEN epoch ELSE epoch + 1 END, \
                 holder = $2, instance = $1, expires_at = {now} + $3 \
                 WHERE name = '{LEADER}' AND (instance = $1 OR expires_at < {now} \
                 OR ($4 AND holder = $2)) RETURNING epoch"
            )
        };
        let epoch: Option<i64> = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_scalar(&sql("$5"))
                    .bind(instance)
                    .bind(node)
                    .bind(ttl_ms)
                    .bind(reclaim)
                    .bind(self.lease_clock_ms())
                    .fetch_optional(p)
                    .await
            }
            Pool::Postgres(p) => {
                sqlx::query_scalar(&sql(PG_NOW_MS))
                    .bind(instance)
                    .bind(node)
                    .bind(ttl_ms)
                    .bind(reclaim)
                    .fetch_optional(p)
                    .await
            }
        }
        .map_err(StoreError::db("taking the leader lease"))?;
        Ok(epoch.map(|epoch| Fence {
            instance: instance.into(),
            epoch,
        }))
    }

    /// Gives the lease up at once (a graceful stop), so another node takes
    /// it at its next attempt instead of after the TTL. Only the holding
    /// process's lease is touched; the epoch stays (the next holder bumps it).
    pub async fn release_lease(&self, instance: &str) -> Result<(), StoreError> {
        query!(
            self.pool.exec(),
            execute,
            "UPDATE cluster_lease SET expires_at = 0 WHERE name = 'leader' AND instance = $1",
            instance
        )
        .map_err(StoreError::db("releasing the leader lease"))?;
        Ok(())
    }

    /// Records this node's heartbeat: its role, and the epoch it holds as
    /// leader (`None`: the lease's current epoch, as a follower sees it).
    /// The first heartbeat of a process (a new `instance`) sets the
    /// member's start time.
    pub async fn heartbeat(
        &self,
        node: &str,
        instance: &str,
        role: &str,
        epoch: Option<i64>,
    ) -> Result<(), StoreError> {
        let sql = |now: &str| {
            format!(
                "INSERT INTO cluster_members (node, instance, role, epoch, started_at, last_heartbeat) \
                 VALUES ($1, $2, $3, COALESCE($4, (SELECT epoch FROM cluster_lease WHERE name = '{LEADER}')), \
                 {now}, {now}) \
                 ON CONFLICT (node) DO UPDATE SET role = excluded.role, epoch = excluded.epoch, \
                 last_heartbeat = excluded.last_heartbeat, \
                 started_at = CASE WHEN cluster_members.instance = excluded.instance \
                 THEN cluster_members.started_at ELSE excluded.started_at END, \
                 instance = excluded.instance"
            )
        };
        match &self.pool {
            Pool::Sqlite(p) => sqlx::query(&sql("$5"))
                .bind(node)
                .bind(instance)
                .bind(role)
                .bind(epoch)
                .bind(self.lease_clock_ms())
                .execute(p)
                .await
                .map(|_| ()),
            Pool::Postgres(p) => sqlx::query(&sql(PG_NOW_MS))
                .bind(node)
                .bind(instance)
                .bind(role)
                .bind(epoch)
                .execute(p)
                .await
                .map(|_| ()),
        }
        .map_err(StoreError::db("recording a heartbeat"))
    }

    /// The lease, the members and the lease clock's now.
    pub async fn cluster_view(&self) -> Result<ClusterView, StoreError> {
        let now: i64 = match &self.pool {
            Pool::Sqlite(_) => self.lease_clock_ms(),
            Pool::Postgres(p) => sqlx::query_scalar(&format!("SELECT {PG_NOW_MS}"))
                .fetch_one(p)
                .await
                .map_err(StoreError::db("reading the database clock"))?,
        };
        let lease = query!(
            self.pool.exec(),
            fetch_one,
            "SELECT holder, epoch, expires_at FROM cluster_lease WHERE name = 'leader'"
        )
        .map_err(StoreError::db("reading the leader lease"))?;
        let members = query!(
            self.pool.exec(),
            fetch_all,
            "SELECT node, role, epoch, started_at, last_heartbeat FROM cluster_members ORDER BY node"
        )
        .map_err(StoreError::db("reading the cluster members"))?;
        Ok(ClusterView {
            now,
            lease: LeaseRecord {
                holder: lease.get("holder"),
                epoch: lease.get("epoch"),
                expires_at: lease.get("expires_at"),
            },
            members: members
                .iter()
                .map(|r: &Row| MemberRecord {
                    node: r.get("node"),
                    role: r.get("role"),
                    epoch: r.get("epoch"),
                    started_at: r.get("started_at"),
                    last_heartbeat: r.get("last_heartbeat"),
                })
                .collect(),
        })
    }

    /// The same store, whose write transactions each check `fence` first
    /// and fail with [`StoreError::Fenced`], writing nothing, once another
    /// process holds the lease: the handle the singleton jobs write with.
    pub fn fenced(&self, fence: Fence) -> Store {
        let mut s = self.clone();
        s.fence = Some(fence);
        s
    }

    /// The fence this handle's writes check, if any.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// Checks this handle's fence inside `tx` (see [`Store::begin_write`]):
    /// the lease row must still name this process and epoch. On PostgreSQL
    /// the row is locked (FOR SHARE) until the transaction ends, so a
    /// takeover waits for this write and the write never lands after it; on
    /// SQLite the transaction holds the file's write lock already.
    pub(super) async fn check_fence(&self, tx: &mut Tx) -> Result<(), StoreError> {
        let Some(f) = &self.fence else {
            return Ok(());
        };
        let held: Option<i64> = match tx {
            Tx::Sqlite(t) => sqlx::query_scalar(
                "SELECT epoch FROM cluster_lease WHERE name = 'leader' AND instance = $1 AND epoch = $2",
            )
            .bind(&*f.instance)
            .bind(f.epoch)
            .fetch_optional(&mut **t)
            .await,
            Tx::Postgres(t) => sqlx::query_scalar(
                "SELECT epoch FROM cluster_lease WHERE name = 'leader' AND instance = $1 AND epoch = $2 \
                 FOR SHARE",
            )
            .bind(&*f.instance)
            .bind(f.epoch)
            .fetch_optional(&mut **t)
            .await,
        }
        .map_err(StoreError::db("checking the leader lease"))?;
        match held {
            Some(_) => Ok(()),
            None => Err(StoreError::Fenced { epoch: f.epoch }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::AuditEvent;
    use std::time::UNIX_EPOCH;

    const TTL: Duration = Duration::from_secs(15);

    /// Two handles on one SQLite file, standing for two processes, on one
    /// clock the test moves.
    async fn two() -> (tempfile::TempDir, Store, Store, Arc<ManualClock>) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let path = dir.path().join("s.db");
        let a = Store::open(&path, true, clock.clone()).await.unwrap();
        let b = Store::open(&path, false, clock.clone()).await.unwrap();
        (dir, a.with_node("node-a"), b.with_node("node-b"), clock)
    }

    #[tokio::test]
    async fn the_lease_is_renewed_by_its_holder_and_taken_over_with_a_new_epoch_after_expiry() {
        let (_dir, a, b, clock) = two().await;
        let fa = a.acquire_lease("node-a", "ia", TTL, true).await.unwrap();
        let fa = fa.expect("a free lease is taken");
        assert_eq!(fa.epoch(), 1);
        // Held: the other node neither takes it nor reclaims another's.
        assert_eq!(
            b.acquire_lease("node-b", "ib", TTL, true).await.unwrap(),
            None
        );
        clock.advance(Duration::from_secs(10));
        // Renewed by its holder: same epoch, a new expiry.
        let again = a.acquire_lease("node-a", "ia", TTL, false).await.unwrap();
        assert_eq!(again, Some(fa.clone()));
        clock.advance(Duration::from_secs(10));
        assert_eq!(
            b.acquire_lease("node-b", "ib", TTL, false).await.unwrap(),
            None
        );
        let view = b.cluster_view().await.unwrap();
        assert_eq!(
            (view.lease.holder.as_str(), view.lease.epoch),
            ("node-a", 1)
        );
        assert!(view.lease_live());
        // Not renewed for a whole TTL: the other node takes over, epoch 2.
        clock.advance(TTL);
        let fb = b.acquire_lease("node-b", "ib", TTL, false).await.unwrap();
        assert_eq!(fb.as_ref().map(Fence::epoch), Some(2));
        // The old holder's renewal now fails: it is a follower.
        assert_eq!(
            a.acquire_lease("node-a", "ia", TTL, false).await.unwrap(),
            None
        );
        // A restart of node-b (a new process) reclaims its own lease at
        // once, as a new epoch; a graceful stop hands it over at once.
        let fb2 = b.acquire_lease("node-b", "ib2", TTL, true).await.unwrap();
        assert_eq!(fb2.as_ref().map(Fence::epoch), Some(3));
        b.release_lease("ib2").await.unwrap();
        let fa2 = a.acquire_lease("node-a", "ia", TTL, false).await.unwrap();
        assert_eq!(fa2.as_ref().map(Fence::epoch), Some(4));
    }

    #[tokio::test]
    async fn a_write_fenced_with_an_old_epoch_is_refused_and_writes_nothing() {
        let (_dir, a, b, clock) = two().await;
        let old = a
            .acquire_lease("node-a", "ia", TTL, false)
            .await
            .unwrap()
            .unwrap();
        let job = a.fenced(old.clone());
        // While held, the fenced handle writes.
        job.append_audit(&[AuditEvent::new("maintenance", "maintenance", "ok")])
            .await
            .unwrap();
        let head = a.audit_head().await.unwrap();
        clock.advance(TTL + Duration::from_secs(1));
        let new = b
            .acquire_lease("node-b", "ib", TTL, false)
            .await
            .unwrap()
            .unwrap();
        assert!(new.epoch() > old.epoch());
        // The paused old leader resumes: every kind of write is refused.
        let e = job
            .append_audit(&[AuditEvent::new("maintenance", "maintenance", "ok")])
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Fenced { epoch: 1 }), "{e:?}");
        assert!(e.is_fenced());
        let e = job.save_renewed_keys(&[]).await.unwrap_err();
        assert!(e.is_fenced(), "{e:?}");
        let e = job.abandon_stale_user_certs(i64::MAX).await.unwrap_err();
        assert!(e.is_fenced(), "{e:?}");
        assert_eq!(a.audit_head().await.unwrap(), head, "nothing was written");
        // The new leader's fenced handle writes; unfenced writes (the API's)
        // never asked.
        b.fenced(new)
            .append_audit(&[AuditEvent::new("maintenance", "maintenance", "ok")])
            .await
            .unwrap();
        a.append_audit(&[AuditEvent::new("client", "sign", "ok")])
            .await
            .unwrap();
        assert_eq!(a.audit_head().await.unwrap(), head + 2);
    }

    #[tokio::test]
    async fn heartbeats_list_the_members_with_their_role_and_start() {
        let (_dir, a, b, clock) = two().await;
        a.heartbeat("node-a", "ia", "leader", Some(1))
            .await
            .unwrap();
        b.heartbeat("node-b", "ib", "follower", None).await.unwrap();
        clock.advance(Duration::from_secs(5));
        a.heartbeat("node-a", "ia", "leader", Some(1))
            .await
            .unwrap();
        let v = a.cluster_view().await.unwrap();
        let names: Vec<_> = v.members.iter().map(|m| m.node.as_str()).collect();
        assert_eq!(names, ["node-a", "node-b"]);
        let m = &v.members[0];
        assert_eq!(m.last_heartbeat - m.started_at, 5_000);
        assert_eq!((m.role.as_str(), m.epoch), ("leader", 1));
        // A restarted process starts its member row's clock again.
        a.heartbeat("node-a", "ia2", "follower", None)
            .await
            .unwrap();
        let v = a.cluster_view().await.unwrap();
        assert_eq!(v.members[0].started_at, v.members[0].last_heartbeat);
    }
}
