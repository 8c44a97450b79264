//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas only one reconciles.
//!
//! Like client-go's leaderelection: a candidate creates the Lease or, when it is held,
//! watches the record; a record that has not changed for `leaseDurationSeconds` *as
//! measured on this candidate's clock* (no cross-node clock comparison) is expired and
//! taken over with an optimistic-concurrency update (resourceVersion). The holder renews
//! every retry period and steps down when it has not renewed for the renew deadline.
//! On shutdown the holder releases the Lease so a standby takes over at once.

use crate::{Error, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// Longest the Lease release at shutdown may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Timing of the election.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a record stays valid without renewal.
    pub lease_duration: Duration,
    /// The holder steps down when it could not renew for this long (< lease_duration).
    pub renew_deadline: Duration,
    /// How often candidates and the holder try.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate does with the Lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease exists: create it holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    Acquire,
    /// Someone else holds a live record.
    Wait,
}

/// The part of a record whose change proves the holder alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<String>,
    resource_version: Option<String>,
}

/// A candidate's local view: the last record seen and when (on our clock) it changed.
#[derive(Debug, Default)]
pub struct Observer {
    last: Option<(Record, Instant)>,
}

impl Observer {
    /// Decides what `identity` should do with `lease` at `now`.
    pub fn decide(
        &mut self,
        lease: Option<&Lease>,
        identity: &str,
        now: Instant,
        default_duration: Duration,
    ) -> Decision {
        let Some(lease) = lease else {
            self.last = None;
            return Decision::Create;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = Record {
            holder: holder.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let observed_at = match &self.last {
            Some((r, at)) if *r == record => *at,
            _ => now,
        };
        self.last = Some((record, observed_at));
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(default_duration);
        match holder {
            None => Decision::Acquire,
            Some(h) if h == identity => Decision::Renew,
            Some(_) if now.duration_since(observed_at) >= duration => Decision::Acquire,
            Some(_) => Decision::Wait,
        }
    }
}

/// One election participant.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    observer: Observer,
}

fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl Elector {
    /// A candidate `identity` for Lease `name` in `namespace`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timing,
            observer: Observer::default(),
        }
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One round: read the Lease and create/renew/acquire it. `Ok(true)` while we hold it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let current = self.api.get_opt(&self.name).await?;
        let decision = self.observer.decide(
            current.as_ref(),
            &self.identity,
            Instant::now(),
            self.timing.lease_duration,
        );
        let result = match decision {
            Decision::Wait => return Ok(false),
            Decision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(self.duration_secs()),
                        acquire_time: Some(now_micro()),
                        renew_time: Some(now_micro()),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            Decision::Renew | Decision::Acquire => {
                let mut lease = current.ok_or(Error::MissingField("lease"))?;
                let mut spec = lease.spec.take().unwrap_or_default();
                if decision == Decision::Acquire {
                    info!(previous = ?spec.holder_identity, identity = %self.identity, "taking over the leader Lease");
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(now_micro());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(self.duration_secs());
                spec.renew_time = Some(now_micro());
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(true),
            // Lost a race (create or update conflict): someone else got there first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up if we hold it, so a standby need not wait for expiry.
    pub async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now_micro());
        lease.spec = Some(spec);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        info!(identity = %self.identity, "released the leader Lease");
        Ok(())
    }

    /// Campaigns until `shutdown` resolves, publishing leadership on `leader`; releases
    /// the Lease on the way out.
    pub async fn run(mut self, leader: watch::Sender<bool>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_renewal: Option<Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    if !*leader.borrow() {
                        info!(identity = %self.identity, lease = %self.name, "became leader");
                    }
                    last_renewal = Some(Instant::now());
                    leader.send_replace(true);
                }
                Ok(false) => {
                    if *leader.borrow() {
                        warn!(identity = %self.identity, "lost the leader Lease");
                    }
                    last_renewal = None;
                    leader.send_replace(false);
                }
                Err(e) => {
                    warn!(error = %e, "leader election round failed");
                    let stale =
                        last_renewal.is_none_or(|t| t.elapsed() >= self.timing.renew_deadline);
                    if stale && *leader.borrow() {
                        warn!(identity = %self.identity, "could not renew within the deadline; stepping down");
                        leader.send_replace(false);
                    }
                }
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            // Bounded: at `helm uninstall` the API server may stop answering this pod (its
            // RBAC is being deleted) and shutdown must not hang until SIGKILL; the Lease
            // then simply expires.
            match tokio::time::timeout(RELEASE_TIMEOUT, self.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "could not release the leader Lease"),
                Err(_) => warn!(
                    timeout = ?RELEASE_TIMEOUT,
                    "releasing the leader Lease timed out; it will expire"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{mock_api, status_error, Seen};
    use http::Method;
    use serde_json::json;

    fn lease(holder: Option<&str>, rv: &str, renew: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("tribe-operator".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renew.parse().unwrap())),
                ..LeaseSpec::default()
            }),
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn absent_lease_is_created() {
        assert_eq!(
            Observer::default().decide(None, "me", Instant::now(), D),
            Decision::Create
        );
    }

    #[test]
    fn own_lease_is_renewed_free_lease_acquired() {
        let mut o = Observer::default();
        let now = Instant::now();
        assert_eq!(
            o.decide(
                Some(&lease(Some("me"), "1", "2026-01-01T00:00:00Z")),
                "me",
                now,
                D
            ),
            Decision::Renew
        );
        assert_eq!(
            o.decide(
                Some(&lease(None, "2", "2026-01-01T00:00:00Z")),
                "me",
                now,
                D
            ),
            Decision::Acquire
        );
        assert_eq!(
            o.decide(
                Some(&lease(Some(""), "3", "2026-01-01T00:00:00Z")),
                "me",
                now,
                D
            ),
            Decision::Acquire
        );
    }

    #[test]
    fn standby_takes_over_only_after_the_record_stops_changing() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let held = lease(Some("other"), "1", "2026-01-01T00:00:00Z");
        assert_eq!(o.decide(Some(&held), "me", t0, D), Decision::Wait);
        assert_eq!(
            o.decide(Some(&held), "me", t0 + Duration::from_secs(10), D),
            Decision::Wait
        );
        // The holder renews: the clock restarts.
        let renewed = lease(Some("other"), "2", "2026-01-01T00:00:12Z");
        assert_eq!(
            o.decide(Some(&renewed), "me", t0 + Duration::from_secs(12), D),
            Decision::Wait
        );
        assert_eq!(
            o.decide(Some(&renewed), "me", t0 + Duration::from_secs(26), D),
            Decision::Wait
        );
        // No renewal for a full lease duration: expired.
        assert_eq!(
            o.decide(Some(&renewed), "me", t0 + Duration::from_secs(27), D),
            Decision::Acquire
        );
    }

    fn lease_json(holder: &str, rv: &str) -> serde_json::Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "tribe-operator", "namespace": "ops", "resourceVersion": rv},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": "2026-01-01T00:00:00.000000Z"}})
    }

    #[tokio::test]
    async fn create_then_renew_over_the_api() {
        let mut exists = false;
        let (client, log) = mock_api(move |s: &Seen| match s.method {
            Method::GET if exists => Some((200, lease_json("me", "5"))),
            Method::GET => Some(status_error(404, "NotFound", "no lease")),
            Method::POST => {
                exists = true;
                Some((201, s.body.clone()))
            }
            Method::PUT => Some((200, s.body.clone())),
            _ => None,
        });
        let mut e = Elector::new(client, "ops", "tribe-operator", "me", Timing::default());
        assert!(e.try_acquire_or_renew().await.unwrap());
        assert!(e.try_acquire_or_renew().await.unwrap());
        let seen = log.lock().unwrap().clone();
        let post = seen.iter().find(|s| s.method == Method::POST).unwrap();
        assert_eq!(
            post.path,
            "/apis/coordination.k8s.io/v1/namespaces/ops/leases"
        );
        assert_eq!(post.body["spec"]["holderIdentity"], "me");
        let put = seen.iter().find(|s| s.method == Method::PUT).unwrap();
        assert_eq!(
            put.body["metadata"]["resourceVersion"], "5",
            "optimistic concurrency"
        );
        assert!(
            put.body["spec"].get("preferredHolder").is_none(),
            "no fields a 1.24 server lacks"
        );
    }

    #[tokio::test]
    async fn lost_race_is_not_leadership() {
        let (client, _log) = mock_api(|s: &Seen| match s.method {
            Method::GET => Some(status_error(404, "NotFound", "no lease")),
            _ => Some(status_error(409, "AlreadyExists", "someone else")),
        });
        let mut e = Elector::new(client, "ops", "tribe-operator", "me", Timing::default());
        assert!(!e.try_acquire_or_renew().await.unwrap());
    }

    #[tokio::test]
    async fn holder_releases_on_shutdown() {
        let (client, log) = mock_api(|s: &Seen| match s.method {
            Method::GET => Some((200, lease_json("me", "5"))),
            Method::PUT => Some((200, s.body.clone())),
            _ => None,
        });
        let e = Elector::new(client, "ops", "tribe-operator", "me", Timing::default());
        let (tx, mut rx) = watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(e.run(tx, async {
            let _ = stop_rx.await;
        }));
        rx.wait_for(|l| *l).await.unwrap();
        stop_tx.send(()).unwrap();
        task.await.unwrap();
        assert!(!*rx.borrow());
        let seen = log.lock().unwrap().clone();
        let last_put = seen.iter().rev().find(|s| s.method == Method::PUT).unwrap();
        assert!(
            last_put.body["spec"].get("holderIdentity").is_none(),
            "released: {}",
            last_put.body
        );
    }
}
