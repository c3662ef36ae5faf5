//! The spot-market simulator (provider `sim`). So far: the per-node cloud
//! metadata service; the provider itself comes next.

pub mod metadata;
