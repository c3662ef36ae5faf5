//! Capacity planning: the offer catalog (configs/catalog.json, built in),
//! the planner that filters offers by a job's needs, applies the market
//! policy and ranks what is left by expected total cost (preemptions and
//! their overhead included), the shape comparison by cost per step, and the
//! refresh of the catalog from the clouds' published price files. Pure
//! functions over data; `ringmaster plan` and `ringmaster catalog` print
//! the results.

mod buy;
mod catalog;
mod compare;
mod human;
pub mod policies;
mod rank;
pub mod refresh;

pub use buy::*;
pub use catalog::*;
pub use compare::*;
pub use human::*;
pub use rank::*;

#[cfg(test)]
mod tests;
