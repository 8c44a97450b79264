//! The Secret holding the cluster key and the Redis-protocol password of `spec.app`
//! sidecars. Created once (create-if-absent), never server-side applied, so the key is
//! never rotated by accident; the operator writes it again only to rotate the key (on
//! request) and to add a password missing from a Secret made before there was one.

use super::*;
use crate::crd::SessionCluster;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

/// 32 random bytes from the OS-seeded CSPRNG, hex encoded (64 characters).
pub fn random_key() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Secret `<name>-key` with `cluster.key` = `key` and `resp.password` = `password`.
pub fn secret(sc: &SessionCluster, key: &str, password: &str) -> Secret {
    Secret {
        metadata: child_meta(sc, secret_name(sc)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                KEY_FILE_NAME.to_string(),
                ByteString(key.as_bytes().to_vec()),
            ),
            (
                RESP_PASSWORD_KEY.to_string(),
                ByteString(password.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

/// Whether an existing key Secret lacks the Redis-protocol password a `spec.app` pod
/// needs (a Secret created by an older operator): then [`with_password`] adds it.
pub fn needs_password(sc: &SessionCluster, existing: &Secret) -> bool {
    sc.spec.app.is_some()
        && existing
            .data
            .as_ref()
            .and_then(|d| d.get(RESP_PASSWORD_KEY))
            .is_none_or(|p| p.0.trim_ascii().is_empty())
}

/// `existing` with `password` added as `resp.password`, everything else unchanged (the
/// cluster key, the rotation annotations, the resourceVersion the update carries).
pub fn with_password(mut existing: Secret, password: &str) -> Secret {
    existing.data.get_or_insert_with(BTreeMap::new).insert(
        RESP_PASSWORD_KEY.to_string(),
        ByteString(password.as_bytes().to_vec()),
    );
    existing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cluster;

    #[test]
    fn secret_holds_key() {
        let sc = cluster("shop", "web");
        let (key, password) = (random_key(), random_key());
        let s = secret(&sc, &key, &password);
        assert_eq!(s.metadata.name.as_deref(), Some("shop-key"));
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].controller,
            Some(true)
        );
        let data = s.data.unwrap();
        assert_eq!(data["cluster.key"].0, key.as_bytes());
        assert_eq!(data["resp.password"].0, password.as_bytes());
    }

    /// A Secret made before there was a password gets one added when the cluster runs
    /// `spec.app`, keeping the key and the annotations.
    #[test]
    fn an_old_secret_gets_the_password_added() {
        let mut sc = cluster("shop", "web");
        let mut old = secret(&sc, "k".repeat(32).as_str(), "p");
        old.data.as_mut().unwrap().remove(RESP_PASSWORD_KEY);
        old.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
        assert!(!needs_password(&sc, &old), "no spec.app: nothing to add");
        sc.spec.app = Some(crate::crd::AppSpec {
            image: "shop:1".into(),
            port: 3000,
            command: None,
            args: None,
            env: BTreeMap::new(),
            readiness_path: "/".into(),
            proxy: None,
            resources: None,
        });
        assert!(needs_password(&sc, &old));
        let new = with_password(old.clone(), "secret-password");
        assert!(!needs_password(&sc, &new));
        assert_eq!(new.metadata, old.metadata);
        let data = new.data.unwrap();
        assert_eq!(data[KEY_FILE_NAME], old.data.unwrap()[KEY_FILE_NAME]);
        assert_eq!(data[RESP_PASSWORD_KEY].0, b"secret-password");
    }

    #[test]
    fn keys_are_random_and_long() {
        let (a, b) = (random_key(), random_key());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
