//! The API clients as the serving node keeps them: the whole client table in
//! memory, checked against the store's client change counter before every
//! use, so that no request reads the table itself.
//!
//! The check is shared: one task reads the counter for all the requests that
//! are waiting when it starts, and answers them together (like the audit
//! writer's group commit). A request is only answered by a read that started
//! after it arrived, so a client change committed before a request arrives is
//! seen by that request, on every node that shares the store, as it was when
//! each request read the table (decision 0025). When the counter moved the
//! task reads the table again; the counter is read before the table, so a
//! change that lands between the two reads only costs one more reload.

use crate::store::{ClientRecord, PresentedCert, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The client table at one value of the change counter.
#[derive(Debug, Default)]
pub(super) struct Directory {
    generation: i64,
    by_id: HashMap<String, ClientRecord>,
    all: Vec<ClientRecord>,
}

impl Directory {
    fn new(generation: i64, all: Vec<ClientRecord>) -> Self {
        let by_id = all
            .iter()
            .map(|c| (c.client_id.clone(), c.clone()))
            .collect();
        Directory {
            generation,
            by_id,
            all,
        }
    }

    /// The client whose bearer token carries `client_id`.
    pub(super) fn by_id(&self, client_id: &str) -> Option<&ClientRecord> {
        self.by_id.get(client_id)
    }

    /// The clients a presented certificate is bound to, by name (as
    /// [`Store::clients_by_cert`] answers).
    pub(super) fn by_cert(&self, cert: &PresentedCert<'_>) -> Vec<ClientRecord> {
        self.all
            .iter()
            .filter(|c| c.cert.as_ref().is_some_and(|b| b.matches(cert)))
            .cloned()
            .collect()
    }
}

type Reply = oneshot::Sender<Result<Arc<Directory>, Arc<StoreError>>>;

/// Handle to the task that keeps the directory current.
#[derive(Debug, Clone)]
pub struct ClientDirectory {
    tx: mpsc::Sender<Reply>,
}

impl ClientDirectory {
    /// Starts the task on the current runtime; it ends when the last handle
    /// is dropped.
    pub fn spawn(store: Store) -> Self {
        let (tx, mut rx) = mpsc::channel::<Reply>(1024);
        tokio::spawn(async move {
            let mut current: Option<Arc<Directory>> = None;
            let mut waiting = Vec::new();
            loop {
                let Some(first) = rx.recv().await else { break };
                waiting.push(first);
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                let answer = refresh(&store, &mut current).await;
                for reply in waiting.drain(..) {
                    let _ = reply.send(answer.clone());
                }
            }
        });
        Self { tx }
    }

    /// The client table as of a read of the change counter that started
    /// after this call.
    pub(super) async fn current(&self) -> Result<Arc<Directory>, Arc<StoreError>> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Arc::new(StoreError::WriterStopped);
        self.tx.send(reply).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn refresh(
    store: &Store,
    current: &mut Option<Arc<Directory>>,
) -> Result<Arc<Directory>, Arc<StoreError>> {
    let generation = store.client_generation().await.map_err(Arc::new)?;
    if let Some(d) = current
        && d.generation == generation
    {
        return Ok(Arc::clone(d));
    }
    let all = store.list_clients().await.map_err(Arc::new)?;
    let d = Arc::new(Directory::new(generation, all));
    *current = Some(Arc::clone(&d));
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditEvent, CertBinding};
    use std::time::{Duration, UNIX_EPOCH};

    fn client(name: &str, id: &str, cert: Option<CertBinding>) -> ClientRecord {
        ClientRecord {
            name: name.into(),
            client_id: id.into(),
            secret_hash: "00".into(),
            scopes: "sign".into(),
            created_at: 5,
            cert,
            require_cert: false,
        }
    }

    /// Two handles on one store file: the serving node's, and another
    /// process's (the CLI, or another node) that changes clients.
    async fn two_handles() -> (tempfile::TempDir, Store, Store) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let clock = Arc::new(crate::clock::ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ));
        let node = Store::open(&path, true, clock.clone()).await.unwrap();
        let cli = Store::open(&path, false, clock).await.unwrap();
        (dir, node, cli)
    }

    #[tokio::test]
    async fn a_change_committed_elsewhere_holds_for_the_next_lookup() {
        let (_d, node, cli) = two_handles().await;
        let clients = ClientDirectory::spawn(node);
        assert!(clients.current().await.unwrap().by_id("id1").is_none());
        let ev = AuditEvent::new("cli", "client-add", "ok");
        cli.add_client(&client("gw", "id1", None), &ev)
            .await
            .unwrap();
        assert_eq!(
            clients.current().await.unwrap().by_id("id1").unwrap().name,
            "gw"
        );
        let bound = CertBinding::Sha256("a".repeat(64));
        cli.set_client_binding("gw", Some(&bound), None, &ev)
            .await
            .unwrap();
        let presented = PresentedCert {
            sha256: &"a".repeat(64),
            names: None,
        };
        let found = clients.current().await.unwrap().by_cert(&presented);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "gw");
        assert!(cli.remove_client("gw").await.unwrap());
        let d = clients.current().await.unwrap();
        assert!(d.by_id("id1").is_none());
        assert!(d.by_cert(&presented).is_empty());
    }

    #[tokio::test]
    async fn concurrent_lookups_all_see_a_committed_client() {
        let (_d, node, cli) = two_handles().await;
        let clients = ClientDirectory::spawn(node);
        let ev = AuditEvent::new("cli", "client-add", "ok");
        cli.add_client(&client("gw", "id1", None), &ev)
            .await
            .unwrap();
        let lookups: Vec<_> = (0..64)
            .map(|_| {
                let c = clients.clone();
                tokio::spawn(async move { c.current().await.unwrap().by_id("id1").is_some() })
            })
            .collect();
        for l in lookups {
            assert!(l.await.unwrap());
        }
    }

    #[tokio::test]
    async fn closing_the_store_is_not_held_up_by_the_kept_connections() {
        let (_d, node, _cli) = two_handles().await;
        let clients = ClientDirectory::spawn(node.clone());
        let audit = crate::store::AuditWriter::spawn(node.clone());
        clients.current().await.unwrap();
        audit
            .append(crate::store::AuditEvent::new("t", "sign", "ok"))
            .await
            .unwrap();
        // Both tasks keep a connection now; closing waits for every one.
        tokio::time::timeout(Duration::from_secs(20), node.close())
            .await
            .expect("the store closes although the writer and the directory are running");
    }

    #[test]
    fn certificates_match_bindings_by_fingerprint_or_by_both_names() {
        let by_hash = client("a", "1", Some(CertBinding::Sha256("ab".repeat(32))));
        let by_name = client(
            "b",
            "2",
            Some(CertBinding::Name {
                subject: "CN=gw".into(),
                issuer: "CN=ca".into(),
            }),
        );
        let d = Directory::new(1, vec![by_hash, by_name, client("c", "3", None)]);
        let names = |sha256: &str, names: Option<(&str, &str)>| -> Vec<String> {
            d.by_cert(&PresentedCert { sha256, names })
                .into_iter()
                .map(|c| c.name)
                .collect()
        };
        assert_eq!(names(&"ab".repeat(32), None), ["a"]);
        assert_eq!(names(&"cd".repeat(32), Some(("CN=gw", "CN=ca"))), ["b"]);
        assert_eq!(
            names(&"ab".repeat(32), Some(("CN=gw", "CN=ca"))),
            ["a", "b"]
        );
        assert!(names(&"cd".repeat(32), Some(("CN=gw", "CN=other"))).is_empty());
        assert!(names(&"cd".repeat(32), None).is_empty());
    }
}
