//! The leader's provider (pod 0): node 0's workers start here, every other
//! node's through that pod's agent over the rendezvous.

/// The leader (pod 0): node 0's workers here, every other node's through
/// that pod's agent.
pub struct KubeProvider {
    rdzv: crate::rendezvous::Rendezvous,
    nodes: u32,
}

impl KubeProvider {
    pub fn new(rdzv: crate::rendezvous::Rendezvous, nodes: u32) -> Self {
        KubeProvider { rdzv, nodes }
    }
}

impl crate::provider::Provider for KubeProvider {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }
    fn agent_nodes(&self) -> Vec<u32> {
        (1..self.nodes).collect()
    }
    fn spawn_worker(
        &self,
        node: u32,
        bin: &std::path::Path,
        c: &proto::contract::WorkerContract,
        env: &[(String, String)],
        log: &std::path::Path,
        tee: Option<(u32, crate::progress::Console)>,
    ) -> std::io::Result<crate::provider::Spawned> {
        if node == 0 {
            return crate::process::spawn_worker(bin, env, log, tee)
                .map(crate::provider::Spawned::Local);
        }
        let rank = c.rank;
        let agent = self.rdzv.agent(node).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("the agent of node {node} is not connected"),
            )
        })?;
        agent
            .send(proto::wire::Response::Spawn {
                rank,
                env: env.to_vec(),
            })
            .map_err(|_| std::io::Error::other(format!("the agent of node {node} is gone")))?;
        Ok(crate::provider::Spawned::Remote)
    }
}
