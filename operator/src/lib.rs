//! The Tribe operator: turns `SessionCluster` objects into running, replicated
//! session clusters on Kubernetes.
//!
//! # Layout
//! - [`crd`]: the `SessionCluster` custom resource (`tribe.rs/v1alpha1`), spec and status.
//! - [`resources`]: pure functions that build every child object from a `SessionCluster`.
//! - [`status`]: observation → status (conditions, members, sessions); pure.
//! - [`probe`]: polls the nodes' admin `/cluster` endpoint with a short timeout.
//! - [`controller`]: the kube-runtime `Controller`, `reconcile` and `error_policy`.
//! - [`policy`]: what `spec.template` may ask of the pods (node-level volumes,
//!   ServiceAccounts, the security context); pure.
//! - [`lease`]: leader election on a `coordination.k8s.io` Lease.
//! - [`metrics`]: Prometheus metrics and the admin HTTP server (`/healthz`, `/readyz`, `/metrics`).
//! - [`local`]: `tribe-operator local FILE`, a SessionCluster as local node processes.
//! - [`sd`]: Prometheus HTTP service discovery of the nodes (`/sd/nodes`).
//! - [`skew`]: the `VersionSkew` condition from the nodes' protocol reports; pure.
//! - [`check`]: `tribe-operator check URL...` (the chart's `helm test`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod check;
pub mod controller;
pub mod crd;
pub mod lease;
pub mod local;
pub mod metrics;
pub mod ownership;
pub mod policy;
pub mod probe;
pub mod resources;
pub mod rotation;
pub mod sd;
pub mod skew;
pub mod status;

#[cfg(test)]
mod fixtures;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("kubernetes API error: {0}")]
    Kube(#[source] kube::Error),

    /// The API server refused to apply a child object (e.g. it failed validation).
    #[error("applying {kind} {name} was rejected: {}", api_message(source))]
    Apply {
        /// Kind of the child object.
        kind: String,
        /// Name of the child object.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },

    /// The operator's RBAC does not reach what the SessionCluster needs (the Secrets of
    /// its namespace: the chart grants them per namespace, `rbac.secretNamespaces`).
    #[error("{0}")]
    Forbidden(String),

    /// The SessionCluster's spec cannot be realised.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// The object lacks something every stored object has (namespace, name, uid).
    #[error("object is missing {0}")]
    MissingField(&'static str),

    /// An operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),

    /// (De)serialising YAML or JSON failed.
    #[error("serialization: {0}")]
    Serialization(String),

    /// Local I/O (files, sockets, processes) failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The API server's own message for an API error (not the whole Status dump).
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

impl Error {
    /// A short, stable label for metrics (`failures{error="..."}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Apply { .. } => "apply",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Forbidden(_) => "forbidden",
            Error::MissingField(_) => "missing_field",
            Error::Timeout(_) => "timeout",
            Error::Serialization(_) => "serialization",
            Error::Io(_) => "io",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
