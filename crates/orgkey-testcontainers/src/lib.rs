//! A real orgkey appliance for your integration tests, on [testcontainers].
//!
//! This crate owns [`OrgkeyDev`], the `orgkey:dev` image as a testcontainers
//! [`Image`], and [`OrgkeyDevContainer`], a started appliance with what a test
//! needs from it: the base URL, the gateway and admin bearer tokens, the org
//! key certificate and, when asked for, the org cert. Started with no config,
//! the image is a test fixture: it creates a SoftHSM2 token, an org key, an
//! optional self-signed org cert and two clients, ignites itself and serves
//! plain HTTP on port 8443. Nothing in it is a mock: the signatures come from
//! the same appliance you run in production, with a software token.
//!
//! The image is built locally by orgkey's `scripts/images.sh` (there is no
//! registry to pull it from); testcontainers never pulls an image it finds.
//!
//! # In your tests
//!
//! ```no_run
//! use orgkey_testcontainers::{OrgkeyDev, OrgkeyDevContainer, secrecy::ExposeSecret};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let orgkey = OrgkeyDevContainer::start(OrgkeyDev::default().with_domains(["example.com"])).await?;
//! let signature = reqwest::Client::new()
//!     .post(format!("{}/v1/sign", orgkey.base_url()))
//!     .bearer_auth(orgkey.gateway_token().expose_secret())
//!     .body("hello")
//!     .send().await?
//!     .error_for_status()?
//!     .text().await?;
//! // Verify `signature` against orgkey.org_key() (an armored OpenPGP certificate).
//! # let _ = signature; Ok(()) }
//! ```
//!
//! The gateway client has the `sign`, `certify`, `issue` and `revoke` scopes;
//! the admin client has `admin`. The container is removed when the
//! [`OrgkeyDevContainer`] is dropped.
//!
//! # Several nodes on one PostgreSQL
//!
//! The image also makes a cluster of dev nodes sharing one store in a
//! PostgreSQL database (the `orgkey-postgres:15` image, trust authentication
//! on its container network). Each node has its own SoftHSM2 token holding
//! the same org key. Roles are explicit, so two nodes never race to create an
//! org key: the single [`ClusterRole::First`] node creates the org key and the
//! clients and writes a key backup with its passphrase, the tokens and the
//! public material into a Docker volume every node mounts
//! ([`OrgkeyDev::with_shared_volume`]); each [`ClusterRole::Join`] node waits
//! for that backup, joins the store with `orgkey init --store-url`, restores
//! the org key into its own token with `orgkey backup restore-keys`, and then
//! serves the same gateway and admin tokens (clients live in the shared
//! store). The algorithm, domains and org cert are the first node's; a joined
//! node ignores its own. The backup passphrase in the volume is a test
//! credential, like everything else in the fixture.
//!
//! ```no_run
//! use orgkey_testcontainers::{ClusterRole, OrgkeyDev, OrgkeyDevContainer};
//! use orgkey_testcontainers::testcontainers::ImageExt;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // PostgreSQL runs as `db` on the network `net` (started before the nodes).
//! let node = |role, id: &str| {
//!     OrgkeyDev::default()
//!         .with_cluster_role(role)
//!         .with_store_url("postgres://orgkey@db:5432/orgkey")
//!         .with_shared_volume("my-cluster-keys")
//!         .with_node_id(id)
//!         .with_network("net")
//! };
//! let a = OrgkeyDevContainer::start(node(ClusterRole::First, "node-a")).await?;
//! let b = OrgkeyDevContainer::start(node(ClusterRole::Join, "node-b")).await?;
//! assert_eq!(a.org_key(), b.org_key());
//! # Ok(()) }
//! ```
//!
//! testcontainers does not remove volumes: remove the shared one after the
//! test (`docker volume rm`), or a later first node refuses it (it holds
//! another cluster's org key).

use secrecy::SecretString;
use std::borrow::Cow;
use testcontainers::core::{ContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, Image, TestcontainersError};

pub use secrecy;
pub use testcontainers;

/// The image name `scripts/images.sh` tags the appliance with.
pub const IMAGE_NAME: &str = "orgkey";
/// The image tag `scripts/images.sh` tags the appliance with.
pub const IMAGE_TAG: &str = "dev";
/// The port the fixture serves its API on (plain HTTP) inside the container.
pub const API_PORT: u16 = 8443;
/// What the fixture prints on stdout once it is ignited and serving.
pub const READY_MESSAGE: &str = "orgkey dev appliance ready";
/// Where a cluster node mounts the volume the nodes share
/// ([`OrgkeyDev::with_shared_volume`], `ORGKEY_DEV_SHARED`).
pub const SHARED_DIR: &str = "/var/lib/orgkey-shared";

/// Files the fixture writes for tests.
const GATEWAY_TOKEN: &str = "/run/orgkey/gateway.token";
const ADMIN_TOKEN: &str = "/run/orgkey/admin.token";
const ORG_KEY: &str = "/run/orgkey/org-key.asc";
const ORG_CERT: &str = "/run/orgkey/org-cert.pem";

/// The org key algorithms of `orgkey org-key generate --algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// NIST P-256 (the default).
    #[default]
    P256,
    /// NIST P-384.
    P384,
    /// Ed25519 (OpenPGP v4 EdDSA). An org cert then gets a P-256 key.
    Ed25519,
    /// RSA 3072.
    Rsa3072,
    /// RSA 4096.
    Rsa4096,
}

impl Algorithm {
    /// The name `orgkey` and `ORGKEY_DEV_ALGORITHM` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::P256 => "p256",
            Algorithm::P384 => "p384",
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Rsa3072 => "rsa3072",
            Algorithm::Rsa4096 => "rsa4096",
        }
    }
}

/// A node's part in a cluster of dev nodes (`ORGKEY_DEV_CLUSTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterRole {
    /// Creates the org key and the clients, and writes the key backup into
    /// the shared volume. Exactly one per cluster.
    First,
    /// Waits for the first node's key backup, joins the store and restores
    /// the org key into its own token.
    Join,
}

impl ClusterRole {
    /// The value of `ORGKEY_DEV_CLUSTER`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRole::First => "first",
            ClusterRole::Join => "join",
        }
    }
}

/// The `orgkey:dev` image as a test fixture, with its options.
///
/// `OrgkeyDev::default()` is a P-256 org key for `example.com` without an
/// org cert. Everything [`testcontainers::ImageExt`] offers (networks,
/// names, extra environment) works on it as on any image.
#[derive(Debug, Clone)]
pub struct OrgkeyDev {
    env: Vec<(&'static str, String)>,
    org_cert: bool,
    mounts: Vec<Mount>,
}

impl Default for OrgkeyDev {
    fn default() -> Self {
        OrgkeyDev {
            env: vec![
                ("ORGKEY_DEV_ALGORITHM", Algorithm::default().as_str().into()),
                ("ORGKEY_DEV_DOMAINS", "example.com".into()),
                ("ORGKEY_DEV_ORG_CERT", "0".into()),
            ],
            org_cert: false,
            mounts: Vec::new(),
        }
    }
}

impl OrgkeyDev {
    fn set(mut self, name: &'static str, value: String) -> Self {
        match self.env.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.env.push((name, value)),
        }
        self
    }

    /// The org key's algorithm (`ORGKEY_DEV_ALGORITHM`).
    pub fn with_algorithm(self, algorithm: Algorithm) -> Self {
        self.set("ORGKEY_DEV_ALGORITHM", algorithm.as_str().into())
    }

    /// The managed mail domains (`ORGKEY_DEV_DOMAINS`). The first one also
    /// names the org key's user ID, `orgkey@DOMAIN`. An empty list is
    /// refused by the container, which then never becomes ready.
    pub fn with_domains<I, S>(self, domains: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let list: Vec<String> = domains.into_iter().map(|d| d.as_ref().to_owned()).collect();
        self.set("ORGKEY_DEV_DOMAINS", list.join(","))
    }

    /// Also self-sign an org cert, the X.509 CA of S/MIME issuance
    /// (`ORGKEY_DEV_ORG_CERT=1`).
    pub fn with_org_cert(mut self, org_cert: bool) -> Self {
        self.org_cert = org_cert;
        self.set(
            "ORGKEY_DEV_ORG_CERT",
            if org_cert { "1" } else { "0" }.into(),
        )
    }
}

/// Cluster options (see the crate docs, "Several nodes on one PostgreSQL").
impl OrgkeyDev {
    /// This node's role in a cluster of dev nodes (`ORGKEY_DEV_CLUSTER`).
    /// Needs [`with_store_url`](Self::with_store_url) and
    /// [`with_shared_volume`](Self::with_shared_volume); the container
    /// refuses a role without a store URL, and an ed25519 org key (SoftHSM2
    /// cannot back up EdDSA keys).
    pub fn with_cluster_role(self, role: ClusterRole) -> Self {
        self.set("ORGKEY_DEV_CLUSTER", role.as_str().into())
    }

    /// The PostgreSQL database the nodes share (`ORGKEY_DEV_STORE_URL`,
    /// `postgres://USER@HOST:PORT/DB`, no password: `orgkey-postgres:15`
    /// trusts its network). The node waits for the database to take
    /// connections (`ORGKEY_DEV_STORE_WAIT` seconds, default 60).
    pub fn with_store_url(self, url: impl Into<String>) -> Self {
        self.set("ORGKEY_DEV_STORE_URL", url.into())
    }

    /// This node's id in the audit log (`ORGKEY_DEV_NODE_ID`; default the
    /// container's host name): 1 to 64 letters, digits, '.', '-' or '_'.
    pub fn with_node_id(self, id: impl Into<String>) -> Self {
        self.set("ORGKEY_DEV_NODE_ID", id.into())
    }

    /// Mounts the named Docker volume the cluster's nodes share at
    /// [`SHARED_DIR`] (created by Docker if it does not exist; a new volume
    /// belongs to the `orgkey` user the fixture runs as). Use a new volume
    /// per cluster.
    pub fn with_shared_volume(mut self, volume: impl Into<String>) -> Self {
        self.mounts.retain(|m| m.target() != Some(SHARED_DIR));
        self.mounts.push(Mount::volume_mount(volume, SHARED_DIR));
        self
    }
}

impl Image for OrgkeyDev {
    fn name(&self) -> &str {
        IMAGE_NAME
    }

    fn tag(&self) -> &str {
        IMAGE_TAG
    }

    fn ready_conditions(&self) -> Vec<WaitFor> {
        vec![WaitFor::message_on_stdout(READY_MESSAGE)]
    }

    fn env_vars(
        &self,
    ) -> impl IntoIterator<Item = (impl Into<Cow<'_, str>>, impl Into<Cow<'_, str>>)> {
        self.env.iter().map(|(n, v)| (*n, v.as_str()))
    }

    fn expose_ports(&self) -> &[ContainerPort] {
        &[ContainerPort::Tcp(API_PORT)]
    }

    fn mounts(&self) -> impl IntoIterator<Item = &Mount> {
        &self.mounts
    }
}

/// What can go wrong starting the fixture.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image is not in the Docker engine. It is built locally and there
    /// is no registry to pull it from.
    #[error(
        "the image is not in the Docker engine: build it with orgkey's scripts/images.sh ({0})"
    )]
    NoImage(String),
    /// Starting, inspecting or reading the container failed.
    #[error("testcontainers: {0}")]
    Testcontainers(#[from] TestcontainersError),
    /// A file the fixture writes is not text.
    #[error("{0} in the container is not UTF-8")]
    NotUtf8(&'static str),
}

impl Error {
    fn from_start(e: TestcontainersError) -> Self {
        // testcontainers pulls an image that create does not find.
        let text = e.to_string();
        if text.contains("failed to pull the image") {
            Error::NoImage(text)
        } else {
            Error::Testcontainers(e)
        }
    }
}

/// A started, ignited `orgkey:dev` appliance. Dropping it removes the container.
pub struct OrgkeyDevContainer {
    container: ContainerAsync<OrgkeyDev>,
    base_url: String,
    gateway_token: SecretString,
    admin_token: SecretString,
    org_key: String,
    org_cert: Option<String>,
}

impl std::fmt::Debug for OrgkeyDevContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgkeyDevContainer")
            .field("id", &self.container.id())
            .field("base_url", &self.base_url)
            .field("org_cert", &self.org_cert.is_some())
            .finish_non_exhaustive()
    }
}

impl OrgkeyDevContainer {
    /// Starts the image (or a request made from it with
    /// [`testcontainers::ImageExt`]) and waits until it is ready.
    pub async fn start(
        request: impl Into<ContainerRequest<OrgkeyDev>> + Send,
    ) -> Result<Self, Error> {
        let container = request.into().start().await.map_err(Error::from_start)?;
        Self::from_container(container).await
    }

    /// Wraps a container started some other way (it must be ready).
    pub async fn from_container(container: ContainerAsync<OrgkeyDev>) -> Result<Self, Error> {
        let host = container.get_host().await?;
        let port = container.get_host_port_ipv4(API_PORT).await?;
        // url::Host's Display puts an IPv6 address in brackets.
        let base_url = format!("http://{host}:{port}");
        let gateway_token = read(&container, GATEWAY_TOKEN).await?;
        let admin_token = read(&container, ADMIN_TOKEN).await?;
        let org_key = read(&container, ORG_KEY).await?;
        let org_cert = if container.image().org_cert {
            Some(read(&container, ORG_CERT).await?)
        } else {
            None
        };
        Ok(OrgkeyDevContainer {
            container,
            base_url,
            gateway_token: SecretString::from(gateway_token.trim().to_owned()),
            admin_token: SecretString::from(admin_token.trim().to_owned()),
            org_key,
            org_cert,
        })
    }

    /// `http://HOST:PORT` of the API, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Bearer token of the `gateway` client (scopes sign, certify, issue, revoke).
    pub fn gateway_token(&self) -> &SecretString {
        &self.gateway_token
    }

    /// Bearer token of the `admin` client (scope admin).
    pub fn admin_token(&self) -> &SecretString {
        &self.admin_token
    }

    /// The org key's armored OpenPGP certificate (public).
    pub fn org_key(&self) -> &str {
        &self.org_key
    }

    /// The org cert (PEM) when the image was started [`OrgkeyDev::with_org_cert`].
    pub fn org_cert_pem(&self) -> Option<&str> {
        self.org_cert.as_deref()
    }

    /// The container, for what testcontainers offers beyond this handle
    /// (logs, exec, stop, pause).
    pub fn container(&self) -> &ContainerAsync<OrgkeyDev> {
        &self.container
    }
}

async fn read(container: &ContainerAsync<OrgkeyDev>, path: &'static str) -> Result<String, Error> {
    let bytes = container.copy_file_from(path, Vec::new()).await?;
    String::from_utf8(bytes).map_err(|_| Error::NotUtf8(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(image: &OrgkeyDev) -> Vec<(String, String)> {
        image
            .env_vars()
            .into_iter()
            .map(|(n, v)| (n.into().into_owned(), v.into().into_owned()))
            .collect()
    }

    #[test]
    fn defaults_name_every_option() {
        let e = env(&OrgkeyDev::default());
        assert_eq!(
            e,
            [
                ("ORGKEY_DEV_ALGORITHM".to_owned(), "p256".to_owned()),
                ("ORGKEY_DEV_DOMAINS".to_owned(), "example.com".to_owned()),
                ("ORGKEY_DEV_ORG_CERT".to_owned(), "0".to_owned()),
            ]
        );
    }

    #[test]
    fn builder_options_replace_the_defaults() {
        let image = OrgkeyDev::default()
            .with_algorithm(Algorithm::Ed25519)
            .with_domains(["example.org", "example.net"])
            .with_org_cert(true);
        let e = env(&image);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e.contains(&("ORGKEY_DEV_ALGORITHM".into(), "ed25519".into())));
        assert!(e.contains(&(
            "ORGKEY_DEV_DOMAINS".into(),
            "example.org,example.net".into()
        )));
        assert!(e.contains(&("ORGKEY_DEV_ORG_CERT".into(), "1".into())));
        assert!(image.org_cert);
        assert_eq!((image.name(), image.tag()), ("orgkey", "dev"));
    }

    #[test]
    fn cluster_options_set_their_variables_and_mount_the_shared_volume() {
        let image = OrgkeyDev::default()
            .with_cluster_role(ClusterRole::First)
            .with_cluster_role(ClusterRole::Join)
            .with_store_url("postgres://orgkey@db:5432/orgkey")
            .with_node_id("node-b")
            .with_shared_volume("old")
            .with_shared_volume("keys");
        let e = env(&image);
        assert_eq!(e.len(), 6, "{e:?}");
        for (n, v) in [
            ("ORGKEY_DEV_CLUSTER", "join"),
            ("ORGKEY_DEV_STORE_URL", "postgres://orgkey@db:5432/orgkey"),
            ("ORGKEY_DEV_NODE_ID", "node-b"),
        ] {
            assert!(e.contains(&(n.into(), v.into())), "{n}: {e:?}");
        }
        let mounts: Vec<_> = image.mounts().into_iter().collect();
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        assert_eq!(
            (mounts[0].source(), mounts[0].target()),
            (Some("keys"), Some(SHARED_DIR))
        );
        assert_eq!(OrgkeyDev::default().mounts().into_iter().count(), 0);
    }

    #[test]
    fn a_missing_image_names_the_script_that_builds_it() {
        let e = Error::from_start(TestcontainersError::other(
            "failed to pull the image 'orgkey:dev', error: Docker responded with status code 500: no such host",
        ));
        assert!(matches!(e, Error::NoImage(_)), "{e}");
        assert!(e.to_string().contains("scripts/images.sh"), "{e}");
        let e = Error::from_start(TestcontainersError::other("container exited"));
        assert!(matches!(e, Error::Testcontainers(_)), "{e}");
    }
}
