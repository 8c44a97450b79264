//! What `spec.persistence` adds to a node: its `TRIBE_*` settings and, with volumes, the
//! data mount. Both are empty without persistence, so the pods of a cluster that does
//! not ask for it are exactly what they were before the feature existed (an operator
//! upgrade rolls nobody's pods).

use super::deployment::{NodeSetting, SettingValue};
use crate::crd::SessionCluster;
use k8s_openapi::api::core::v1::VolumeMount;

/// Where a node's volume is mounted, and its `TRIBE_DATA_DIR`.
pub const DATA_DIR: &str = "/var/lib/tribe";
/// The name of the volume (and of the StatefulSet's claim template): claims are
/// `data-<pod>`.
pub const DATA_VOLUME: &str = "data";

/// The persistence settings of every node: `TRIBE_DATA_DIR` (volumes) or
/// `TRIBE_POSTGRES_URL` (from the Secret), `TRIBE_DURABILITY` and
/// `TRIBE_MAX_ACTIVE_SESSIONS`. None without persistence.
pub fn settings(sc: &SessionCluster) -> Vec<NodeSetting> {
    let Some(p) = sc.spec.persistence() else {
        return Vec::new();
    };
    let mut settings = vec![match &p.postgres {
        None => NodeSetting {
            name: tribe_api::env::DATA_DIR,
            value: SettingValue::Literal(DATA_DIR.into()),
        },
        Some(pg) => NodeSetting {
            name: tribe_api::env::POSTGRES_URL,
            value: SettingValue::SecretKey {
                name: pg.secret_ref.name.clone(),
                key: pg.secret_ref.key.clone(),
            },
        },
    }];
    settings.push(NodeSetting {
        name: tribe_api::env::DURABILITY,
        value: SettingValue::Literal(p.durability.as_str().into()),
    });
    if let Some(n) = p.max_active_sessions {
        settings.push(NodeSetting {
            name: tribe_api::env::MAX_ACTIVE_SESSIONS,
            value: SettingValue::Literal(n.to_string()),
        });
    }
    settings
}

/// The node container's mount of its volume, when it has one.
pub fn data_mount(sc: &SessionCluster) -> Option<VolumeMount> {
    sc.spec.wants_volumes().then(|| VolumeMount {
        name: DATA_VOLUME.into(),
        mount_path: DATA_DIR.into(),
        ..VolumeMount::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Durability, Persistence};
    use crate::fixtures::cluster;

    fn names(s: &[NodeSetting]) -> Vec<&str> {
        s.iter().map(|s| s.name).collect()
    }

    #[test]
    fn nothing_without_persistence() {
        let mut sc = cluster("shop", "web");
        assert!(settings(&sc).is_empty());
        assert!(data_mount(&sc).is_none());
        // Present but disabled is off too.
        sc.spec.persistence = Some(Persistence::default());
        assert!(settings(&sc).is_empty());
        assert!(data_mount(&sc).is_none());
    }

    #[test]
    fn volume_settings() {
        let mut sc = cluster("shop", "web");
        sc.spec.persistence = Some(Persistence {
            enabled: true,
            durability: Durability::Sync,
            max_active_sessions: Some(100_000),
            ..Persistence::default()
        });
        let s = settings(&sc);
        assert_eq!(
            names(&s),
            [
                "TRIBE_DATA_DIR",
                "TRIBE_DURABILITY",
                "TRIBE_MAX_ACTIVE_SESSIONS"
            ]
        );
        assert_eq!(s[0].value, SettingValue::Literal("/var/lib/tribe".into()));
        assert_eq!(s[1].value, SettingValue::Literal("sync".into()));
        assert_eq!(s[2].value, SettingValue::Literal("100000".into()));
        let m = data_mount(&sc).unwrap();
        assert_eq!((m.name.as_str(), m.mount_path.as_str()), ("data", DATA_DIR));
        assert_ne!(m.read_only, Some(true));
    }

    #[test]
    fn postgres_settings_have_no_volume() {
        let mut sc = cluster("shop", "web");
        sc.spec.persistence = Some(crate::fixtures::persistence(true));
        let s = settings(&sc);
        assert_eq!(names(&s), ["TRIBE_POSTGRES_URL", "TRIBE_DURABILITY"]);
        assert_eq!(
            s[0].value,
            SettingValue::SecretKey {
                name: "db".into(),
                key: "url".into()
            }
        );
        assert_eq!(s[1].value, SettingValue::Literal("write-behind".into()));
        assert!(data_mount(&sc).is_none());
        assert!(!sc.spec.wants_volumes());
    }
}
