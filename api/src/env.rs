//! The environment variables a node reads (each is also a `tribe-node` flag: `TRIBE_X_Y`
//! is `--x-y`). The operator writes them into pod templates; the node's configuration
//! table reads them.

macro_rules! names {
    ($($name:ident;)*) => {
        $(
            #[doc = concat!("`TRIBE_", stringify!($name), "`; what it means: `tribe-node --help`.")]
            pub const $name: &str = concat!("TRIBE_", stringify!($name));
        )*
        /// Every variable above, in declaration order.
        pub const ALL: &[&str] = &[$($name),*];
    };
}

names! {
    NODE_ID;
    CLUSTER;
    HTTP_ADDR;
    ADMIN_ADDR;
    REPLICATION_ADDR;
    ADVERTISE_ADDR;
    MEMBERSHIP;
    MULTICAST_GROUP;
    MULTICAST_INTERFACE;
    MULTICAST_TTL;
    HEARTBEAT_INTERVAL;
    MEMBER_TIMEOUT;
    DNS_NAME;
    DNS_INTERVAL;
    PEERS;
    REPLICATION;
    BACKUPS;
    SEND_MODE;
    SYNC_TIMEOUT;
    CONSISTENCY_WAIT;
    SESSION_TIMEOUT;
    COOKIE_NAME;
    COOKIE_SECURE;
    CLUSTER_KEY_FILE;
    INSECURE;
    KEY_POLL_INTERVAL;
    MAX_HANDSHAKES;
    MAX_FRAME;
    PEER_QUEUE;
    DRAIN_TIMEOUT;
    WORKER_THREADS;
    MIN_MEMBERS;
    ANTI_ENTROPY_INTERVAL;
    SHUTDOWN_DELAY;
    RESP_ADDR;
    RESP_PASSWORD_FILE;
    RESP_INSECURE;
    RESP_MAX_CLIENTS;
    RESP_MAX_REQUEST;
    RESP_AUTH_TIMEOUT;
    RESP_IDLE_TIMEOUT;
    PROXY_ADDR;
    PROXY_UPSTREAM;
    PROXY_ADAPTER;
    PROXY_COOKIE;
    PROXY_KEY_PREFIX;
    DATA_DIR;
    DURABILITY;
    FLUSH_INTERVAL;
    MAX_ACTIVE_SESSIONS;
    POSTGRES_URL;
    LOG_FORMAT;
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_the_prefixed_identifiers() {
        assert_eq!(super::NODE_ID, "TRIBE_NODE_ID");
        assert_eq!(super::ANTI_ENTROPY_INTERVAL, "TRIBE_ANTI_ENTROPY_INTERVAL");
        let unique: std::collections::BTreeSet<_> = super::ALL.iter().collect();
        assert_eq!(unique.len(), super::ALL.len());
    }
}
