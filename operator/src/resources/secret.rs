//! The Secret holding the cluster key. Created once (create-if-absent), never
//! server-side applied, so the key is never rotated by accident.

use super::*;
use crate::crd::SessionCluster;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

/// 32 random bytes from the OS-seeded CSPRNG, hex encoded (64 characters).
pub fn random_key() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Secret `<name>-key` with `cluster.key` = `key`.
pub fn secret(sc: &SessionCluster, key: &str) -> Secret {
    Secret {
        metadata: child_meta(sc, secret_name(sc)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            KEY_FILE_NAME.to_string(),
            ByteString(key.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cluster;

    #[test]
    fn secret_holds_key() {
        let sc = cluster("shop", "web");
        let key = random_key();
        let s = secret(&sc, &key);
        assert_eq!(s.metadata.name.as_deref(), Some("shop-key"));
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].controller,
            Some(true)
        );
        assert_eq!(s.data.unwrap()["cluster.key"].0, key.as_bytes());
    }

    #[test]
    fn keys_are_random_and_long() {
        let (a, b) = (random_key(), random_key());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
