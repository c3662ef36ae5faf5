//! Node agents at the rendezvous: single-use agent tokens, the address an
//! agent gives, and a dismissed agent's place taken by the next.

use super::*;
use proto::wire::{Request, Response, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn hello(addr: SocketAddr, token: &str, node: u32) -> (TcpStream, Response) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let frame = proto::wire::encode(&Request::AgentHello {
        version: PROTOCOL_VERSION,
        token: token.into(),
        node,
        addr: Some(format!("10.0.0.{node}")),
    });
    s.write_all(&frame).await.unwrap();
    let r = read(&mut s).await;
    (s, r)
}

async fn read(s: &mut TcpStream) -> Response {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn an_agent_token_admits_its_node_once_and_a_dismissed_agent_is_replaced() {
    let (rdzv, mut events) = Rendezvous::start("127.0.0.1:0", "run-token".into())
        .await
        .unwrap();
    let t1 = rdzv.enroll_agent(1);
    assert_ne!(t1, "run-token");
    // Not node 2's token.
    let (_, r) = hello(rdzv.addr(), &t1, 2).await;
    assert!(matches!(r, Response::Error { .. }), "{r:?}");
    let (mut first, r) = hello(rdzv.addr(), &t1, 1).await;
    assert_eq!(r, Response::Ok);
    assert_eq!(rdzv.agent_addr(1).as_deref(), Some("10.0.0.1"));
    // Used up: the same token again is refused.
    let (_, r) = hello(rdzv.addr(), &t1, 1).await;
    assert!(matches!(r, Response::Error { .. }), "{r:?}");
    // A replacement: the old agent is told to shut down, the new one (its
    // own token) takes the node, and the old one's end is not the node's.
    rdzv.dismiss_agent(1);
    assert_eq!(read(&mut first).await, Response::Shutdown { code: 8 });
    assert!(rdzv.agent(1).is_none());
    let t2 = rdzv.enroll_agent(1);
    let (_second, r) = hello(rdzv.addr(), &t2, 1).await;
    assert_eq!(r, Response::Ok);
    drop(first);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(rdzv.agent(1).is_some(), "the new agent keeps the node");
    let mut lost = 0;
    while let Ok(ev) = events.try_recv() {
        if matches!(ev, RdzvEvent::AgentLost { node: 1 }) {
            lost += 1;
        }
    }
    assert_eq!(lost, 0, "a dismissed agent's end is no lost node");
    // The run's own token still admits an agent (Kubernetes pods).
    let (_, r) = hello(rdzv.addr(), "run-token", 3).await;
    assert_eq!(r, Response::Ok);
}
