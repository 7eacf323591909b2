//! [`Graph`]: an instance's rules state together with an in-memory index of its entries,
//! for callers that hold a whole ledger in memory (the offline cross-check, tests). It
//! finds each entry's predecessor and the fork sibling itself and reports re-sent entries
//! as [`Decision::Known`]. Memory grows with the instance's entries, not the fleet's.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::{Decision, EntryRef, InstanceState, Loc, Node, Outcome, Policy, RuleError, Time};
use crate::ledger::entry::GENESIS_PREV;

/// An instance's tree in memory plus its [`InstanceState`].
#[derive(Debug, Clone)]
pub struct Graph {
    pub state: InstanceState,
    index: HashMap<String, (Loc, EntryRef), RandomState>,
    first_child: HashMap<String, String, RandomState>,
}

impl Graph {
    pub fn new(instance: &str) -> Graph {
        Graph {
            state: InstanceState::new(instance),
            index: HashMap::default(),
            first_child: HashMap::default(),
        }
    }

    /// Feed one verified entry observed at `observed`. Predecessors must come first
    /// (replaying in `at` order, ties broken by seq, guarantees it).
    pub fn observe(
        &mut self,
        node: &Node,
        observed: Time,
        policy: &Policy,
    ) -> Result<Outcome, RuleError> {
        if let Some((loc, _)) = self.index.get(&node.hash) {
            return Ok(Outcome {
                loc: *loc,
                decision: Decision::Known,
            });
        }
        let parent = if node.seq == 0 && node.prev == GENESIS_PREV {
            None
        } else {
            match self.index.get(&node.prev) {
                Some((loc, _)) => Some(*loc),
                None if self.index.is_empty() => {
                    return Err(RuleError::NotGenesis {
                        hash: node.hash.clone(),
                        seq: node.seq,
                    });
                }
                None => {
                    return Err(RuleError::UnknownParent {
                        hash: node.hash.clone(),
                        prev: node.prev.clone(),
                    });
                }
            }
        };
        let sibling = match parent {
            Some(p) if self.state.would_fork(p, &node.prev) => self
                .first_child
                .get(&node.prev)
                .and_then(|h| self.index.get(h))
                .map(|(_, e)| e.clone()),
            _ => None,
        };
        let outcome = self
            .state
            .observe(node, parent, sibling.as_ref(), observed, policy)?;
        self.index.insert(
            node.hash.clone(),
            (outcome.loc, EntryRef::new(node, observed)),
        );
        self.first_child
            .entry(node.prev.clone())
            .or_insert_with(|| node.hash.clone());
        Ok(outcome)
    }

    /// Where entry `hash` sits.
    pub fn loc(&self, hash: &str) -> Option<Loc> {
        self.index.get(hash).map(|(l, _)| *l)
    }

    /// The compact record of entry `hash`.
    pub fn entry(&self, hash: &str) -> Option<&EntryRef> {
        self.index.get(hash).map(|(_, e)| e)
    }

    /// Number of distinct entries seen.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}
