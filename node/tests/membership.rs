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
/// multicast alone within 2 s; a fourth node of another cluster on the same group is
/// never admitted, and its heartbeats are counted as rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_nodes_find_each_other_and_ignore_another_cluster() {
    require_tools(&[]);
    let hub = Hub::new();
    let namespaces: Vec<Netns> = (0..4).map(|_| Netns::new("mc")).collect();
    let ips: Vec<Ipv4Addr> = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| hub.plug(ns, 10 + i as u8))
        .collect();
    let group = unique_group();
    let args = |cluster: &'static str| -> Vec<String> {
        [
            "--cluster",
            cluster,
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
    let tribe = args("tribe");
    let other = args("other");

    let started = Instant::now();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            Node::spawn(
                &format!("n{}", i + 1),
                Addrs::on(ips[i]),
                Some(&namespaces[i]),
                &strs(&tribe),
            )
        })
        .collect();
    let mut intruder = Node::spawn("n4", Addrs::on(ips[3]), Some(&namespaces[3]), &strs(&other));

    // Every node lists the other two as alive — with no peer list — within 2 s of start.
    for (i, node) in nodes.iter().enumerate() {
        let want = others(i);
        eventually(
            &format!("{} to see {want:?}", node.name),
            Duration::from_secs(2).saturating_sub(started.elapsed()),
            || async {
                let alive = node.alive_members().await?;
                if alive == want {
                    Ok(())
                } else {
                    Err(format!("{} sees {alive:?}", node.name))
                }
            },
        )
        .await;
    }
    let formed = started.elapsed();
    eprintln!("multicast cluster of 3 formed {formed:?} after start");
    for n in nodes.iter_mut().chain(std::iter::once(&mut intruder)) {
        n.wait_ready(READY_TIMEOUT).await;
    }

    // The intruder's heartbeats reach the others (same group, same bridge) and are
    // refused, and the intruder refuses theirs.
    for node in nodes.iter().chain(std::iter::once(&intruder)) {
        eventually(
            &format!("{} to reject heartbeats of the other cluster", node.name),
            Duration::from_secs(5),
            || async {
                match node.metric("heartbeats_rejected").await? {
                    Some(v) if v >= 1.0 => Ok(()),
                    Some(v) => Err(format!("heartbeats_rejected = {v}")),
                    // Not exported as a metric: the debug log names each rejection.
                    None if node.log().contains("heartbeat rejected")
                        && node.log().contains("reason=Cluster") =>
                    {
                        Ok(())
                    }
                    None => Err("no heartbeats_rejected metric and no rejection in the log".into()),
                }
            },
        )
        .await;
    }
    // ...and nobody admits anybody across clusters, for several heartbeat intervals.
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
            let theirs = intruder.member_states().await?;
            if theirs.is_empty() {
                Ok(())
            } else {
                Err(format!("n4 (cluster other) lists {theirs:?}"))
            }
        },
    )
    .await;
    let view = intruder.cluster().await.unwrap();
    assert_eq!(view["cluster"], "other", "{view}");
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

    // n3 comes back (record and process): a new incarnation, admitted again.
    dns.set_records(&name, &ips);
    nodes[2] = Node::spawn("n3", addrs(2), Some(&ns), &dns_args);
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
