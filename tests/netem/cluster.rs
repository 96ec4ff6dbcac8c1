//! The `cluster-failover` scenario: the verifier's chat clients reach three
//! roomq nodes (on a three-server NATS JetStream cluster) through the
//! impairing proxy and a round-robin balancer, so they are spread over the
//! nodes; halfway through the sending phase one node is killed with
//! SIGKILL. Its clients reconnect through the balancer to the other nodes
//! and carry on. The verifier's promises must hold: no acknowledged message
//! missing, none shown twice, room order kept, no session lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::common::nats::{spawn_node, NatsCluster};
use super::proxy::{Impairment, Proxy};
use super::verifier::{self, Plan};

/// Hands each new connection to the next node that accepts it.
async fn start_balancer(nodes: Vec<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("balancer binds");
    let addr = listener.local_addr().expect("balancer address");
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (nodes, next) = (nodes.clone(), next.clone());
            tokio::spawn(async move {
                let first = next.fetch_add(1, Ordering::Relaxed);
                for i in 0..nodes.len() {
                    let node = nodes[(first + i) % nodes.len()];
                    if let Ok(mut server) = TcpStream::connect(node).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

pub async fn run(plan: Plan) -> String {
    let nats = NatsCluster::start(3);
    let mut nodes: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|node| spawn_node(&nats, node, "history_max_limit = 10000", ""))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|(_, addr, _)| *addr).collect();
    let balancer = start_balancer(addrs.clone()).await;
    let impairment = Impairment {
        delay_ms: (20, 80),
        ..Default::default()
    };
    let proxy = Proxy::start(balancer, impairment, 19).await;
    let survivor = addrs[1];
    let half = plan.send_for / 2;
    let (report, ()) = tokio::join!(verifier::run(move || survivor, proxy.addr, &plan), async {
        plan.sending.notified().await;
        tokio::time::sleep(half).await;
        let (doomed, _, _) = &mut nodes[0];
        let _ = doomed.kill();
        let _ = doomed.wait();
        println!(
            "netem cluster-failover: node a SIGKILLed {} s into the sending phase",
            half.as_secs()
        );
    });
    for (child, _, _) in &mut nodes {
        let _ = child.kill();
        let _ = child.wait();
    }
    report.line(
        "cluster-failover",
        "proxy(delay 20-80ms)+balancer over 3 roomq nodes on 3 nats-servers, one node SIGKILLed",
    )
}
