//! The admin credential of the session endpoints (format and rules:
//! [`tribe_api::admin_token`]): tokens with a scope (`read`, `read-values`, `delete`)
//! and an expiry, tagged with HMAC-SHA256 under a key derived from the cluster key.
//! Minting is here for tools and tests that hold a [`ClusterKey`]; `kubectl tribe`
//! mints from the key Secret itself (the same construction, the same test vector).

use tribe_api::admin_token::{self as token, Claims, Refusal, Scope, Scopes};

use crate::crypto::ClusterKey;
use crate::keyring::KeySet;

/// The key the tokens are tagged with: HMAC-SHA256(cluster key, `KEY_LABEL`).
fn admin_key(key: &ClusterKey) -> ClusterKey {
    key.derive(token::KEY_LABEL, &[])
}

/// A token for `claims` under `key`.
pub fn mint(key: &ClusterKey, claims: &Claims) -> String {
    claims.token(&admin_key(key).tag(&[claims.payload().as_bytes()]))
}

/// A token for `scopes` that lives `lifetime_secs` from now.
pub fn mint_for(key: &ClusterKey, scopes: &[Scope], lifetime_secs: u64) -> String {
    mint(
        key,
        &Claims {
            scopes: Scopes::of(scopes),
            expires: crate::store::unix_now().saturating_add(lifetime_secs),
        },
    )
}

/// Checks the header's token for a request that needs `need`: tagged by a key of `keys`
/// (any: during a rotation old and new), not expired, not too long-lived, in scope.
pub fn verify(
    keys: &KeySet,
    header: Option<&str>,
    need: Scope,
    now: u64,
) -> Result<Claims, Refusal> {
    let parsed = token::parse(header.ok_or(Refusal::Missing)?)?;
    let signed = keys
        .entries()
        .iter()
        .any(|e| admin_key(&e.key).verify(&[parsed.payload.as_bytes()], &parsed.tag));
    if !signed {
        return Err(Refusal::BadSignature);
    }
    token::check(&parsed.claims, need, now)?;
    Ok(parsed.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_test_vector() {
        let (secret, want) = token::TEST_VECTOR;
        let claims = Claims {
            scopes: Scopes::of(&[Scope::Read, Scope::ReadValues]),
            expires: 1_700_000_000,
        };
        assert_eq!(mint(&ClusterKey::new(secret), &claims), want);
    }

    #[test]
    fn verify_checks_key_expiry_and_scope() {
        let key = ClusterKey::new(b"0123456789abcdef");
        let keys = KeySet::single(key.clone());
        let now = 1_000_000;
        let t = |s: &[Scope], e: u64, k: &ClusterKey| {
            mint(
                k,
                &Claims {
                    scopes: Scopes::of(s),
                    expires: e,
                },
            )
        };
        let read = t(&[Scope::Read], now + 60, &key);
        assert!(verify(&keys, Some(&read), Scope::Read, now).is_ok());
        let e = verify(&keys, Some(&read), Scope::Delete, now).unwrap_err();
        assert_eq!(e.status(), 403, "{e}");
        let other = t(
            &[Scope::Read],
            now + 60,
            &ClusterKey::new(b"another key 0123"),
        );
        assert_eq!(
            verify(&keys, Some(&other), Scope::Read, now),
            Err(Refusal::BadSignature)
        );
        let expired = t(&[Scope::Read], now - 1, &key);
        assert_eq!(
            verify(&keys, Some(&expired), Scope::Read, now),
            Err(Refusal::Expired { ago: 1 })
        );
        assert_eq!(verify(&keys, None, Scope::Read, now), Err(Refusal::Missing));
        // A changed scope or expiry breaks the tag.
        let forged = read.replacen(".read.", ".read,delete.", 1);
        assert_eq!(
            verify(&keys, Some(&forged), Scope::Delete, now),
            Err(Refusal::BadSignature)
        );
    }
}
