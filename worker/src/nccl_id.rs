//! Rank 0's NCCL unique id, handed to every rank through the launcher's
//! rendezvous (its round-scoped key-value store), as candle's example does
//! with a polled file. A restart is a new round, so it gets a new id.

use crate::client::Control;
use crate::WorkerError;
use std::time::Duration;

pub const KEY: &str = "nccl-unique-id";

fn encode(id: &[u8; 128]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode(s: &str) -> Result<[u8; 128], WorkerError> {
    let bad = || {
        WorkerError::Rendezvous(format!(
            "malformed NCCL id in the rendezvous ({} chars)",
            s.len()
        ))
    };
    if s.len() != 256 || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 128];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Rank 0 calls `create` and publishes the id; the others wait up to
/// `wait` for it. Every rank returns the same 128 bytes.
pub fn share(
    ctl: &mut Control,
    rank: u32,
    wait: Duration,
    create: impl FnOnce() -> Result<[u8; 128], WorkerError>,
) -> Result<[u8; 128], WorkerError> {
    if rank == 0 {
        let id = create()?;
        ctl.kv_set(KEY, &encode(&id))?;
        Ok(id)
    } else {
        match ctl.kv_get(KEY, wait)? {
            Some(s) => decode(&s),
            None => Err(WorkerError::Rendezvous(format!(
                "rank 0 did not publish the NCCL id within {wait:?}"
            ))),
        }
    }
}

/// `share` with a fresh id from NCCL (ncclGetUniqueId) on rank 0.
pub fn share_new(ctl: &mut Control, rank: u32, wait: Duration) -> Result<[u8; 128], WorkerError> {
    share(ctl, rank, wait, || {
        gpu::nccl_unique_id().map_err(|e| WorkerError::Workload(e.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let mut id = [0u8; 128];
        for (i, b) in id.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        assert_eq!(decode(&encode(&id)).unwrap(), id);
        assert!(decode("abc").is_err());
        assert!(decode(&"zz".repeat(128)).is_err());
    }
}
