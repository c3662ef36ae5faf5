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
        crate::provider::spawn_by_agent(&self.rdzv, node, c.rank, env)
    }
}
