//! Membership against real `tribe-node` processes (issue 2, tests 2 and 3):
//! multicast between network namespaces on a bridge the test creates, and DNS served by
//! a real dnsmasq. Needs root, iproute2, dnsmasq and getent (`scripts/install-test-deps`).

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use support::*;

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The ids of the two other nodes of a three-node cluster `n1..n3`.
fn others(i: usize) -> BTreeSet<String> {
    (0..3)
        .filter(|&j| j != i)
        .map(|j| format!("n{}", j + 1))
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A multicast group unique to this run, in the organisation-local 239/8.
fn unique_group() -> String {
    let pid = std::process::id();
    let n = unique_tag().len() as u32; // varies a little per call; the pid does the rest
    format!(
        "239.{}.{}.{}:{}",
        200 + pid % 50,
        (pid >> 6) % 256,
        (pid + n) % 250 + 1,
        45564
    )
}

/// Issue 2, test 2: three nodes in three namespaces on one bridge find each other by
/// multicast alone within 2 s. Two intruders on the same group are never admitted and
/// their heartbeats are counted as rejected: n4 of another cluster (same key), and n5
/// that names this cluster but signs with another key. A SIGTERMed node leaves the
/// others' lists well before the 3 s member timeout (its leaving heartbeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_nodes_find_each_other_and_ignore_intruders() {
    require_tools(&[]);
    let hub = Hub::new();
    let namespaces: Vec<Netns> = (0..5).map(|_| Netns::new("mc")).collect();
    let ips: Vec<Ipv4Addr> = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| hub.plug(ns, 10 + i as u8))
        .collect();
    let keys = tempfile::tempdir().unwrap();
    let key_file = |name: &str, secret: &str| -> String {
        let path = keys.path().join(name);
        std::fs::write(&path, secret).unwrap();
        path.display().to_string()
    };
    let good_key = key_file("good", "0123456789abcdef-the-cluster-key");
    let bad_key = key_file("bad", "fedcba9876543210-some-other-key!");
    let group = unique_group();
    let args = |cluster: &str, key: &str| -> Vec<String> {
        [
            "--cluster",
            cluster,
            "--cluster-key-file",
            key,
            "--membership",
            "multicast",
            "--multicast-interface",
            "eth0",
            "--multicast-ttl",
            "1",
            "--multicast-group",
            &group,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let tribe = args("tribe", &good_key);

    let started = Instant::now();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let name = format!("n{}", i + 1);
            Node::spawn(
                &name,
                Addrs::on(ips[i]),
                Some(&namespaces[i]),
                &strs(&tribe),
            )
        })
        .collect();
    let mut intruders = [
        Node::spawn(
            "n4",
            Addrs::on(ips[3]),
            Some(&namespaces[3]),
            &strs(&args("other", &good_key)),
        ),
        Node::spawn(
            "n5",
            Addrs::on(ips[4]),
            Some(&namespaces[4]),
            &strs(&args("tribe", &bad_key)),
        ),
    ];

    // Every node lists the other two as alive — with no peer list — within 2 s of start.
    for (i, node) in nodes.iter().enumerate() {
        let want = others(i);
        let budget = Duration::from_secs(2).saturating_sub(started.elapsed());
        node.wait_alive_members(&want, budget).await;
    }
    eprintln!(
        "multicast cluster of 3 formed {:?} after start",
        started.elapsed()
    );
    for n in nodes.iter_mut().chain(intruders.iter_mut()) {
        n.wait_ready(READY_TIMEOUT).await;
    }

    // The intruders' heartbeats reach the others (same group, same bridge) and are
    // refused — for the right reason — and the intruders refuse theirs.
    let expect_rejections = |node: &Node| -> (f64, Vec<&'static str>) {
        match node.name.as_str() {
            "n4" => (1.0, vec!["reason=Cluster"]),
            "n5" => (1.0, vec!["reason=Tag"]),
            _ => (2.0, vec!["reason=Cluster", "reason=Tag"]),
        }
    };
    for node in nodes.iter().chain(intruders.iter()) {
        let (min, reasons) = expect_rejections(node);
        let what = format!("{} to reject heartbeats ({reasons:?})", node.name);
        eventually(&what, Duration::from_secs(5), || async {
            let log = node.log();
            let logged = reasons.iter().all(|r| log.contains(r));
            match node.metric("heartbeats_rejected").await? {
                Some(v) if v >= min => Ok(()),
                Some(v) => Err(format!("heartbeats_rejected = {v}")),
                // Not exported as a metric: the debug log names each rejection.
                None if logged => Ok(()),
                None => Err("no heartbeats_rejected metric and no rejection logged".into()),
            }
        })
        .await;
    }
    // ...and nobody admits an intruder (or is admitted by one), for several heartbeats.
    always(
        "cluster separation",
        Duration::from_millis(1500),
        || async {
            for (i, node) in nodes.iter().enumerate() {
                let all: BTreeSet<String> = node.member_states().await?.into_keys().collect();
                if all != others(i) {
                    return Err(format!("{} lists {all:?}", node.name));
                }
            }
            for node in &intruders {
                let theirs = node.member_states().await?;
                if !theirs.is_empty() {
                    return Err(format!("intruder {} lists {theirs:?}", node.name));
                }
            }
            Ok(())
        },
    )
    .await;
    assert_eq!(intruders[0].cluster().await.unwrap()["cluster"], "other");

    // A graceful leave: gone from the others well before the member timeout.
    let left = Instant::now();
    nodes[2].sigterm();
    for (i, node) in nodes[..2].iter().enumerate() {
        eventually(
            &format!("{} to drop n3 after its SIGTERM", node.name),
            Duration::from_secs(2),
            || async {
                let states = node.member_states().await?;
                if states.contains_key("n3") {
                    Err(format!("{} still lists {states:?}", node.name))
                } else {
                    Ok(())
                }
            },
        )
        .await;
        assert_eq!(
            node.alive_members().await.unwrap(),
            set(&[if i == 0 { "n2" } else { "n1" }])
        );
    }
    eprintln!(
        "n3 left the others' lists {:?} after SIGTERM",
        left.elapsed()
    );
    assert!(
        nodes[2].wait_exit(Duration::from_secs(25)).await,
        "n3 exits 0 after SIGTERM"
    );
}

/// Issue 2, test 3: dnsmasq answers one name with three loopback addresses → the three
/// nodes there form a cluster. A record removed while its node is alive keeps the node
/// (the TCP check succeeds); removed and the node killed → it leaves the others' lists.
/// Re-added and restarted → it is a member again, as a new incarnation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_members_form_a_cluster_and_a_dead_removed_member_leaves() {
    require_tools(&["dnsmasq", "getent"]);
    let ns = Netns::new("dns");
    let subnet = free_subnet();
    let _link = Veth::to_root(&ns, host(subnet, 1), host(subnet, 2));
    let client_ip = host(subnet, 2);
    ns.set_etc(
        "resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n",
    );
    let dns = Dnsmasq::start(&ns, Ipv4Addr::LOCALHOST);
    let name = format!("members-{}.{}", unique_tag(), Dnsmasq::ZONE);
    let ips: Vec<Ipv4Addr> = (2..=4).map(|h| Ipv4Addr::new(127, 0, 0, h)).collect();
    dns.set_records(&name, &ips);
    eventually("dnsmasq to answer", Duration::from_secs(10), || async {
        let got = resolve_in(&ns, &name);
        if got == ips.iter().copied().collect() {
            Ok(())
        } else {
            Err(format!("{name} resolves to {got:?}"))
        }
    })
    .await;

    let dns_args = [
        "--membership",
        "dns",
        "--dns-name",
        &name,
        "--dns-interval",
        "500ms",
    ];
    let addrs = |i: usize| Addrs {
        http: SocketAddr::from((client_ip, 8081 + i as u16)),
        admin: SocketAddr::from((client_ip, 9091 + i as u16)),
        replication: SocketAddr::from((ips[i], 4000)),
    };
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::spawn(&format!("n{}", i + 1), addrs(i), Some(&ns), &dns_args))
        .collect();
    for n in nodes.iter_mut() {
        n.wait_ready(READY_TIMEOUT).await;
    }
    for (i, node) in nodes.iter().enumerate() {
        eventually(
            &format!("{} to see its DNS peers", node.name),
            Duration::from_secs(10),
            || async {
                let alive = node.alive_members().await?;
                if alive == others(i) {
                    Ok(())
                } else {
                    Err(format!("{} sees {alive:?}", node.name))
                }
            },
        )
        .await;
    }

    // n3's record goes away while n3 is alive: the others suspect it, the TCP check
    // succeeds, and it stays a member.
    dns.set_records(&name, &ips[..2]);
    eventually("the record to be gone", Duration::from_secs(10), || async {
        let got = resolve_in(&ns, &name);
        if got.len() == 2 {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    // The nodes keep asking during the window (dnsmasq logs every query), so they did
    // see the shorter answer; n3 stays because it still answers the TCP check.
    let queries = || dns.log().matches(&format!("query[A] {name}")).count();
    let queries_before = queries();
    always(
        "n3 to stay a member while reachable",
        Duration::from_secs(3),
        || async {
            for node in &nodes[..2] {
                if !node.member_states().await?.contains_key("n3") {
                    return Err(format!("{} dropped n3 although n3 is alive", node.name));
                }
            }
            Ok(())
        },
    )
    .await;
    let asked = queries() - queries_before;
    assert!(
        asked >= 6,
        "the nodes re-resolved {name} only {asked} times in 3 s"
    );
    for node in &nodes[..2] {
        let states = node.member_states().await.unwrap();
        assert_eq!(
            states.get("n3").map(String::as_str),
            Some("alive"),
            "{}: {states:?}",
            node.name
        );
    }

    // Now n3 dies (no goodbye): with no record and a failed TCP check it leaves.
    let old_incarnation = incarnation_of(&nodes[0], "n3").await;
    nodes[2].kill();
    for node in &nodes[..2] {
        eventually(
            &format!("{} to drop dead n3", node.name),
            Duration::from_secs(15),
            || async {
                let states = node.member_states().await?;
                if states.contains_key("n3") {
                    Err(format!("{} still lists {states:?}", node.name))
                } else {
                    Ok(())
                }
            },
        )
        .await;
        assert_eq!(
            node.alive_members().await.unwrap(),
            set(&[if node.name == "n1" { "n2" } else { "n1" }])
        );
    }

    // n3 comes back before its record does, as pods started together resolve the
    // headless Service before it lists them all: n3 does not take that answer for the
    // whole cluster (and turn ready) until the name lists n3 itself.
    nodes[2] = Node::spawn("n3", addrs(2), Some(&ns), &dns_args);
    always(
        "n3 to stay unready while the name does not list it",
        Duration::from_millis(1500),
        || async {
            match nodes[2].get("/readyz", true).await {
                Ok((200, _)) => Err("n3 is ready".to_string()),
                _ => Ok(()),
            }
        },
    )
    .await;
    // The record is back: a new incarnation, admitted again.
    dns.set_records(&name, &ips);
    nodes[2].wait_ready(READY_TIMEOUT).await;
    for (i, node) in nodes.iter().enumerate() {
        eventually(
            &format!("{} to see the full cluster again", node.name),
            Duration::from_secs(10),
            || async {
                let alive = node.alive_members().await?;
                if alive == others(i) {
                    Ok(())
                } else {
                    Err(format!("{} sees {alive:?}", node.name))
                }
            },
        )
        .await;
    }
    let new_incarnation = incarnation_of(&nodes[0], "n3").await;
    assert_ne!(
        old_incarnation, new_incarnation,
        "a restarted node is a new incarnation"
    );
}

async fn incarnation_of(node: &Node, member: &str) -> serde_json::Value {
    let view = node.cluster().await.unwrap();
    view["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["node"] == member))
        .map(|m| m["incarnation"].clone())
        .unwrap_or_else(|| panic!("{member} not in {view}"))
}
