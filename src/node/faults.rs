//! Test fault injection: partitions made and healed through the control API, only in a build
//! with the `testkit` feature (the tests') and when the node runs with `COFLOW_TEST_FAULTS=1`.

use std::collections::HashSet;
use std::str::FromStr;

use libp2p::PeerId;

use super::Runtime;
use crate::api::Reply;
use crate::error::{Error, Result};

pub(crate) struct Faults {
    on: bool,
    /// Peers cut off by test fault injection.
    partitioned: HashSet<PeerId>,
}

impl Faults {
    pub(crate) fn from_env() -> Faults {
        Faults {
            on: cfg!(feature = "testkit")
                && std::env::var("COFLOW_TEST_FAULTS").as_deref() == Ok("1"),
            partitioned: HashSet::new(),
        }
    }

    /// Whether `peer` is cut off by a test partition (and so stays blocked).
    pub(crate) fn partitioned(&self, peer: &PeerId) -> bool {
        self.partitioned.contains(peer)
    }
}

impl Runtime {
    /// `Call::TestPartition`: blocks `peers` until healed.
    pub(super) fn test_partition(&mut self, peers: &[String]) -> Result<Reply> {
        self.faults_on()?;
        for p in peers.iter().filter_map(|p| PeerId::from_str(p).ok()) {
            self.swarm.behaviour_mut().blocked.block_peer(p);
            self.faults.partitioned.insert(p);
        }
        Ok(Reply::Done)
    }

    /// `Call::TestHeal`: unblocks the partitioned peers not banned, and lets them be dialed.
    pub(super) fn test_heal(&mut self) -> Result<Reply> {
        self.faults_on()?;
        for p in std::mem::take(&mut self.faults.partitioned) {
            if !self.peers.banned(&p) {
                self.swarm.behaviour_mut().blocked.unblock_peer(p);
            }
            self.peers.clear_backoff(&p);
        }
        Ok(Reply::Done)
    }

    fn faults_on(&self) -> Result<()> {
        if self.faults.on {
            Ok(())
        } else {
            Err(Error::Invalid(
                if cfg!(feature = "testkit") {
                    "test fault injection is off (COFLOW_TEST_FAULTS=1)"
                } else {
                    "test fault injection is not built into this coflow (feature testkit)"
                }
                .into(),
            ))
        }
    }
}
