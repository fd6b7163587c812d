//! Failure detection: which voters the leader has stopped hearing from, and
//! when one is declared down (`Command::NodeDown`), so that live nodes take
//! over its unsubmitted messages and the deliveries aimed at its binds.
//!
//! Owns: the leader's "last heard from" clock per voter and the decision to
//! declare a voter down ([`Liveness`], pure: the store thread feeds it the
//! peers' messages and asks it what is due). Must not touch: what `NodeDown`
//! does to the state (the state machine decides, identically on every
//! replica), raft, or the transport.
//!
//! Why the leader decides: followers talk only to the leader, so only the
//! leader hears every voter (heartbeat responses every couple of ticks); a
//! decision travels through the log like any state change, so every replica
//! hands over the same messages to the same nodes. A leader that lost its
//! quorum cannot commit the decision, so a minority never declares the
//! majority down.
//!
//! Why a node declared down while it was alive (a partition, a long stall)
//! stops instead of rejoining as it is: its binds and its messages have been
//! given to others, and its message ids carry an incarnation the cluster has
//! closed. Its store raises `declared_down`, the engine shuts the node down,
//! and the service manager's restart brings it back with a new incarnation
//! (`NodeUp`), which is the one way in. Until it learns of the decision (it
//! applies the log once the partition heals) it holds back: a node that has
//! not heard from the leader (a follower) or from a quorum (the leader) for
//! half of `down_after` counts itself cut off ([`Liveness::in_contact`]) and
//! its dispatcher hands nothing new to operators, so by the time the others
//! take its messages over it has stopped sending them. What was already on
//! its way to an operator may still go out twice: the hand-over is
//! at-least-once, never at-most-once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The leader's view of which voters are alive.
#[derive(Debug)]
pub struct Liveness {
    node_id: u64,
    down_after: Duration,
    last_heard: HashMap<u64, Instant>,
    /// When this node last became leader: a voter is given `down_after` from
    /// then, since a new leader has heard nothing yet.
    leading_since: Option<Instant>,
    /// When `NodeDown` was last proposed per voter: not proposed again within
    /// `down_after` while the first may still commit.
    proposed_at: HashMap<u64, Instant>,
}

impl Liveness {
    pub fn new(node_id: u64, down_after: Duration) -> Liveness {
        assert!(
            !down_after.is_zero(),
            "a zero down-after would declare every voter down"
        );
        Liveness {
            node_id,
            down_after,
            last_heard: HashMap::new(),
            leading_since: None,
            proposed_at: HashMap::new(),
        }
    }

    /// A raft message from `from` arrived.
    pub fn heard(&mut self, from: u64, now: Instant) {
        if from != self.node_id && from != 0 {
            // Bounded by the voters: `due` forgets everyone else.
            self.last_heard.insert(from, now);
        }
    }

    /// The voter to declare down now, if any (one per call). `recorded_up`
    /// says whether the replicated state still counts a node as up: a node
    /// already down, or never announced, is left alone.
    pub fn due(
        &mut self,
        now: Instant,
        is_leader: bool,
        voters: &[u64],
        recorded_up: impl Fn(u64) -> bool,
    ) -> Option<u64> {
        if !is_leader {
            self.leading_since = None;
            return None;
        }
        let leading_since = *self.leading_since.get_or_insert(now);
        self.last_heard.retain(|id, _| voters.contains(id));
        self.proposed_at.retain(|id, _| voters.contains(id));
        for &voter in voters {
            if voter == self.node_id {
                continue;
            }
            let heard = self
                .last_heard
                .get(&voter)
                .map_or(leading_since, |&at| at.max(leading_since));
            if now.saturating_duration_since(heard) < self.down_after {
                continue;
            }
            if self
                .proposed_at
                .get(&voter)
                .is_some_and(|&at| now.saturating_duration_since(at) < self.down_after)
            {
                continue;
            }
            if !recorded_up(voter) {
                continue;
            }
            self.proposed_at.insert(voter, now);
            return Some(voter);
        }
        None
    }

    /// Whether this node still hears the cluster: a follower its leader, a
    /// leader a quorum of voters (itself included), each within half of
    /// `down_after`, well before the others may declare it down. A lone voter
    /// is always in contact.
    pub fn in_contact(&self, now: Instant, leader_id: u64, voters: &[u64]) -> bool {
        if voters.len() <= 1 {
            return true;
        }
        let window = self.down_after / 2;
        let heard_within = |id: u64| {
            self.last_heard
                .get(&id)
                .is_some_and(|&at| now.saturating_duration_since(at) < window)
        };
        if leader_id == self.node_id {
            let heard = voters
                .iter()
                .filter(|&&v| v != self.node_id && heard_within(v))
                .count();
            (heard + 1) * 2 > voters.len()
        } else {
            leader_id != 0 && heard_within(leader_id)
        }
    }

    /// Time since `voter` was last heard from, for logs.
    pub fn silent_for(&self, voter: u64, now: Instant) -> Option<Duration> {
        let heard = self.last_heard.get(&voter).copied();
        heard
            .or(self.leading_since)
            .map(|at| now.saturating_duration_since(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN_AFTER: Duration = Duration::from_secs(10);

    fn secs(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn a_silent_voter_is_declared_down_once_after_the_window() {
        let start = Instant::now();
        let mut liveness = Liveness::new(1, DOWN_AFTER);
        let voters = [1, 2, 3];
        assert_eq!(liveness.due(start, true, &voters, |_| true), None);
        liveness.heard(2, secs(start, 5));
        liveness.heard(3, secs(start, 5));
        liveness.heard(2, secs(start, 14));
        // Voter 3 last heard at 5 s: due at 15 s, not before.
        assert_eq!(liveness.due(secs(start, 14), true, &voters, |_| true), None);
        assert_eq!(
            liveness.due(secs(start, 15), true, &voters, |_| true),
            Some(3)
        );
        // Proposed: not again while that proposal may commit...
        assert_eq!(liveness.due(secs(start, 16), true, &voters, |_| true), None);
        // ...and not at all once the state says it is down.
        assert_eq!(
            liveness.due(secs(start, 40), true, &voters, |n| n != 3),
            Some(2)
        );
        assert_eq!(
            liveness.due(secs(start, 41), true, &voters, |n| n != 3),
            None
        );
    }

    #[test]
    fn a_new_leader_gives_every_voter_the_whole_window() {
        let start = Instant::now();
        let mut liveness = Liveness::new(1, DOWN_AFTER);
        let voters = [1, 2];
        // Heard long ago while following: leadership starts the clock anew.
        liveness.heard(2, start);
        assert_eq!(
            liveness.due(secs(start, 30), false, &voters, |_| true),
            None
        );
        assert_eq!(liveness.due(secs(start, 31), true, &voters, |_| true), None);
        assert_eq!(liveness.due(secs(start, 40), true, &voters, |_| true), None);
        assert_eq!(
            liveness.due(secs(start, 41), true, &voters, |_| true),
            Some(2)
        );
        // Losing and regaining leadership restarts the window again.
        assert_eq!(
            liveness.due(secs(start, 42), false, &voters, |_| true),
            None
        );
        assert_eq!(liveness.due(secs(start, 60), true, &voters, |_| true), None);
    }

    #[test]
    fn contact_needs_the_leader_or_a_quorum_within_half_the_window() {
        let start = Instant::now();
        let voters = [1, 2, 3];
        let mut follower = Liveness::new(2, DOWN_AFTER);
        assert!(follower.in_contact(start, 0, &[2]), "a lone voter");
        assert!(!follower.in_contact(start, 0, &voters), "no leader known");
        follower.heard(1, start);
        follower.heard(3, secs(start, 4));
        assert!(follower.in_contact(secs(start, 4), 1, &voters));
        // Another follower's word does not count; the leader's is 5 s old.
        assert!(!follower.in_contact(secs(start, 5), 1, &voters));

        let mut leader = Liveness::new(1, DOWN_AFTER);
        assert!(!leader.in_contact(start, 1, &voters), "heard nobody yet");
        leader.heard(3, start);
        assert!(
            leader.in_contact(secs(start, 4), 1, &voters),
            "itself and 3"
        );
        assert!(!leader.in_contact(secs(start, 5), 1, &voters));
        leader.heard(2, secs(start, 5));
        assert!(leader.in_contact(secs(start, 5), 1, &voters));
        assert!(
            !leader.in_contact(secs(start, 5), 1, &[1, 2, 3, 4, 5]),
            "2 of 5"
        );
    }

    #[test]
    fn itself_unannounced_and_removed_nodes_are_never_declared() {
        let start = Instant::now();
        let mut liveness = Liveness::new(1, DOWN_AFTER);
        liveness.heard(9, start);
        liveness.heard(1, start);
        assert_eq!(liveness.due(start, true, &[1, 2], |_| true), None);
        // Voter 2 never announced (no record up): left alone however silent.
        assert_eq!(
            liveness.due(secs(start, 100), true, &[1, 2], |_| false),
            None
        );
        // The lone voter never declares itself down.
        assert_eq!(liveness.due(secs(start, 100), true, &[1], |_| true), None);
        // Node 9 is no voter: forgotten, its entry does not linger.
        assert!(!liveness.last_heard.contains_key(&9));
    }
}
