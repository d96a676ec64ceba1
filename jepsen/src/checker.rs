//! The queue checker: what a history of sends, polls, commits and final reads may not contain.
//!
//! Safety anomalies (any one fails the run):
//! * **lost** — a send acknowledged (`ok`) whose value is not in the final read;
//! * **duplicate** — a value stored at more than one offset; values of at-least-once producers
//!   (no idempotence: a retry after a lost answer stores a value again, as in Kafka) are only
//!   counted;
//! * **inconsistent offset** — two reads disagree on the value at one partition and offset;
//! * **wrong offset** — a send acknowledged at an offset that holds another value;
//! * **non-monotonic send** — one process's acknowledged offsets in a partition go backwards in
//!   send order (at-least-once producers excepted: their retries may reorder, as in Kafka);
//! * **poll skip** — a consumer's next read in a partition jumps over offsets the log holds;
//! * **non-monotonic poll** — a consumer reads a partition backwards;
//! * **aborted read** — a read returns a value whose send certainly failed (G1a);
//! * **committed offset regression** — a group's committed offset in a partition goes down.
//!
//! Liveness (reported, not failing): acknowledged values no poll ever saw (found only by the
//! final read).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::history::{Event, Function, Kind, Read};

/// A kind of anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AnomalyKind {
    Lost,
    Duplicate,
    InconsistentOffset,
    WrongOffset,
    NonMonotonicSend,
    PollSkip,
    NonMonotonicPoll,
    AbortedRead,
    CommittedOffsetRegression,
}

/// One anomaly with the events that show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub description: String,
    /// Indexes of the offending events.
    pub events: Vec<usize>,
}

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub anomalies: Vec<Anomaly>,
    pub sends_ok: usize,
    pub sends_failed: usize,
    pub sends_unknown: usize,
    pub polled_records: usize,
    /// Acknowledged values the consumers never polled (the final read found them).
    pub unseen: usize,
    /// Values in the final read.
    pub final_read_records: usize,
    /// Values of at-least-once producers stored more than once (expected, not anomalies).
    pub at_least_once_duplicates: usize,
}

impl Verdict {
    /// Whether the history is valid.
    pub fn valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// Anomaly counts by kind.
    pub fn counts(&self) -> BTreeMap<AnomalyKind, usize> {
        let mut counts = BTreeMap::new();
        for anomaly in &self.anomalies {
            *counts.entry(anomaly.kind).or_insert(0) += 1;
        }
        counts
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {} (events {:?})", self.kind, self.description, self.events)
    }
}

/// Checks a whole history in which every producer is idempotent.
pub fn check(history: &[Event]) -> Verdict {
    check_with(history, &BTreeSet::new())
}

/// Checks a whole history; sends of the `at_least_once` processes may be stored twice.
pub fn check_with(history: &[Event], at_least_once: &BTreeSet<u64>) -> Verdict {
    let mut verdict = Verdict::default();
    let mut anomalies = Vec::new();

    // Sends: the outcome of each value.
    let mut sent: HashMap<u64, (Kind, usize, Option<u64>, Option<u32>)> = HashMap::new();
    for event in history.iter().filter(|e| e.f == Function::Send && e.kind != Kind::Invoke) {
        if let Some(value) = event.value {
            sent.insert(value, (event.kind, event.index, event.offset, event.partition));
        }
        match event.kind {
            Kind::Ok => verdict.sends_ok += 1,
            Kind::Fail => verdict.sends_failed += 1,
            _ => verdict.sends_unknown += 1,
        }
    }

    // Every read, by where it came from.
    let reads: Vec<(usize, Function, u64, &Read)> = history
        .iter()
        .filter(|e| e.kind == Kind::Ok && matches!(e.f, Function::Poll | Function::FinalRead))
        .flat_map(|e| e.reads.iter().map(move |r| (e.index, e.f, e.process, r)))
        .collect();
    verdict.polled_records = reads.iter().filter(|(_, f, ..)| *f == Function::Poll).count();

    // Inconsistent offsets and the log as observed: (partition, offset) → value.
    let mut at: BTreeMap<(u32, u64), (u64, usize)> = BTreeMap::new();
    for (index, _, _, read) in &reads {
        match at.get(&(read.partition, read.offset)) {
            Some((value, first)) if *value != read.value => anomalies.push(Anomaly {
                kind: AnomalyKind::InconsistentOffset,
                description: format!(
                    "partition {} offset {}: value {} and value {}",
                    read.partition, read.offset, value, read.value
                ),
                events: vec![*first, *index],
            }),
            Some(_) => {}
            None => {
                at.insert((read.partition, read.offset), (read.value, *index));
            }
        }
    }

    // Duplicates: one value at two places.
    let mut places: HashMap<u64, BTreeSet<(u32, u64)>> = HashMap::new();
    for ((partition, offset), (value, _)) in &at {
        places.entry(*value).or_default().insert((*partition, *offset));
    }
    let sender: HashMap<u64, u64> = history
        .iter()
        .filter(|e| e.f == Function::Send && e.kind == Kind::Invoke)
        .filter_map(|e| Some((e.value?, e.process)))
        .collect();
    for (value, where_) in &places {
        if where_.len() > 1 && sender.get(value).is_some_and(|p| at_least_once.contains(p)) {
            verdict.at_least_once_duplicates += 1;
        } else if where_.len() > 1 {
            let events: Vec<usize> = where_.iter().filter_map(|p| at.get(p).map(|(_, i)| *i)).collect();
            anomalies.push(Anomaly {
                kind: AnomalyKind::Duplicate,
                description: format!("value {value} is stored at {where_:?}"),
                events,
            });
        }
    }

    // Lost, wrong offsets, aborted reads, unseen.
    let final_read: HashMap<u64, (u32, u64)> = reads
        .iter()
        .filter(|(_, f, ..)| *f == Function::FinalRead)
        .map(|(_, _, _, r)| (r.value, (r.partition, r.offset)))
        .collect();
    verdict.final_read_records = final_read.len();
    let polled: BTreeSet<u64> =
        reads.iter().filter(|(_, f, ..)| *f == Function::Poll).map(|(_, _, _, r)| r.value).collect();
    let have_final_read = history.iter().any(|e| e.f == Function::FinalRead && e.kind == Kind::Ok);
    let mut sent_values: Vec<_> = sent.iter().collect();
    sent_values.sort_by_key(|(_, (_, index, ..))| *index);
    for (value, (kind, index, offset, partition)) in sent_values {
        match kind {
            Kind::Ok => {
                if have_final_read && !final_read.contains_key(value) {
                    anomalies.push(Anomaly {
                        kind: AnomalyKind::Lost,
                        description: format!(
                            "value {value} was acknowledged at {partition:?}/{offset:?} and never read"
                        ),
                        events: vec![*index],
                    });
                } else if !polled.contains(value) {
                    verdict.unseen += 1;
                }
                if let (Some(p), Some(o)) = (partition, offset) {
                    if let Some((stored, read_index)) = at.get(&(*p, *o)) {
                        if stored != value {
                            anomalies.push(Anomaly {
                                kind: AnomalyKind::WrongOffset,
                                description: format!("value {value} was acknowledged at {p}/{o}, which holds {stored}"),
                                events: vec![*index, *read_index],
                            });
                        }
                    }
                }
            }
            Kind::Fail => {
                if let Some((read_index, read)) =
                    reads.iter().find(|(_, _, _, r)| r.value == *value).map(|(i, _, _, r)| (*i, *r))
                {
                    anomalies.push(Anomaly {
                        kind: AnomalyKind::AbortedRead,
                        description: format!(
                            "value {value} was read at {}/{} although its send failed",
                            read.partition, read.offset
                        ),
                        events: vec![*index, read_index],
                    });
                }
            }
            _ => {}
        }
    }

    // Per process, in the order the sends were invoked (acknowledgements of pipelined sends
    // may arrive in another order): acknowledged offsets only move forward.
    let invoked_at: HashMap<(u64, u64), usize> = history
        .iter()
        .filter(|e| e.f == Function::Send && e.kind == Kind::Invoke)
        .filter_map(|e| Some(((e.process, e.value?), e.index)))
        .collect();
    let mut acknowledged: Vec<&Event> =
        history.iter().filter(|e| e.f == Function::Send && e.kind == Kind::Ok && e.offset.is_some()).collect();
    acknowledged.sort_by_key(|e| e.value.and_then(|v| invoked_at.get(&(e.process, v))).copied().unwrap_or(e.index));
    let mut last_send: HashMap<(u64, u32), (u64, usize)> = HashMap::new();
    // At-least-once producers may reorder too (a retried send lands after later ones).
    for event in acknowledged.into_iter().filter(|e| !at_least_once.contains(&e.process)) {
        let (Some(partition), Some(offset)) = (event.partition, event.offset) else { continue };
        if let Some((previous, previous_index)) = last_send.insert((event.process, partition), (offset, event.index)) {
            if offset <= previous {
                anomalies.push(Anomaly {
                    kind: AnomalyKind::NonMonotonicSend,
                    description: format!(
                        "process {}: a later send got offset {offset} in partition {partition}, an earlier one {previous}",
                        event.process
                    ),
                    events: vec![previous_index, event.index],
                });
            }
        }
    }
    // Per process: poll positions only move forward, but for a new assignment.
    let mut last_poll: HashMap<(u64, u32), (u64, usize)> = HashMap::new();
    for event in history.iter().filter(|e| e.kind == Kind::Ok) {
        match event.f {
            Function::Assign => {
                if let Some(partition) = event.partition {
                    last_poll.remove(&(event.process, partition));
                }
            }
            Function::Poll => {
                for read in &event.reads {
                    let key = (event.process, read.partition);
                    if let Some((previous, previous_index)) = last_poll.insert(key, (read.offset, event.index)) {
                        if read.offset <= previous {
                            anomalies.push(Anomaly {
                                kind: AnomalyKind::NonMonotonicPoll,
                                description: format!(
                                    "process {} read partition {} at {} after {previous}",
                                    event.process, read.partition, read.offset
                                ),
                                events: vec![previous_index, event.index],
                            });
                        } else if let Some(((_, skipped), _)) =
                            at.range((read.partition, previous + 1)..(read.partition, read.offset)).next()
                        {
                            anomalies.push(Anomaly {
                                kind: AnomalyKind::PollSkip,
                                description: format!(
                                    "process {} read partition {} at {previous} then {}, skipping offset {skipped}",
                                    event.process, read.partition, read.offset
                                ),
                                events: vec![previous_index, event.index],
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }

    // Committed offsets per partition never go down.
    let mut committed: HashMap<u32, (u64, usize)> = HashMap::new();
    for event in history.iter().filter(|e| e.kind == Kind::Ok && e.f == Function::Commit) {
        let (Some(partition), Some(offset)) = (event.partition, event.offset) else { continue };
        if let Some((previous, previous_index)) = committed.insert(partition, (offset, event.index)) {
            if offset < previous {
                anomalies.push(Anomaly {
                    kind: AnomalyKind::CommittedOffsetRegression,
                    description: format!("partition {partition}: committed offset {offset} after {previous}"),
                    events: vec![previous_index, event.index],
                });
            }
        }
    }

    anomalies.sort_by_key(|a| (a.kind, a.events.clone()));
    verdict.anomalies = anomalies;
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small history builder.
    #[derive(Default)]
    struct H(Vec<Event>);

    impl H {
        fn push(&mut self, mut event: Event) -> &mut H {
            event.index = self.0.len();
            self.0.push(event);
            self
        }
        fn send(&mut self, process: u64, value: u64, kind: Kind, partition: u32, offset: Option<u64>) -> &mut H {
            let mut invoke = Event::new(process, Kind::Invoke, Function::Send, 0);
            invoke.value = Some(value);
            invoke.partition = Some(partition);
            self.push(invoke);
            let mut done = Event::new(process, kind, Function::Send, 1);
            done.value = Some(value);
            done.partition = Some(partition);
            done.offset = offset;
            self.push(done)
        }
        fn reads(&mut self, process: u64, f: Function, reads: &[(u32, u64, u64)]) -> &mut H {
            self.push(Event::new(process, Kind::Invoke, f, 2));
            let mut done = Event::new(process, Kind::Ok, f, 3);
            done.reads = reads.iter().map(|(p, o, v)| Read { partition: *p, offset: *o, value: *v }).collect();
            self.push(done)
        }
        fn commit(&mut self, partition: u32, offset: u64) -> &mut H {
            let mut done = Event::new(9, Kind::Ok, Function::Commit, 4);
            done.partition = Some(partition);
            done.offset = Some(offset);
            self.push(done)
        }
        fn kinds(&self) -> Vec<AnomalyKind> {
            check(&self.0).anomalies.iter().map(|a| a.kind).collect()
        }
    }

    /// Three values sent by one producer, polled in order and found by the final read.
    fn clean() -> H {
        let mut h = H::default();
        h.send(1, 10, Kind::Ok, 0, Some(0)).send(1, 11, Kind::Ok, 0, Some(1)).send(1, 12, Kind::Info, 0, None);
        h.send(2, 13, Kind::Fail, 0, None);
        h.reads(5, Function::Poll, &[(0, 0, 10)]).reads(5, Function::Poll, &[(0, 1, 11), (0, 2, 12)]);
        h.commit(0, 1).commit(0, 3);
        h.reads(7, Function::FinalRead, &[(0, 0, 10), (0, 1, 11), (0, 2, 12)]);
        h
    }

    #[test]
    fn a_clean_history_is_valid() {
        let verdict = check(&clean().0);
        assert!(verdict.valid(), "{:?}", verdict.anomalies);
        assert_eq!((verdict.sends_ok, verdict.sends_failed, verdict.sends_unknown), (2, 1, 1));
        assert_eq!(verdict.unseen, 0);
    }

    #[test]
    fn a_lost_write_is_reported() {
        let mut h = H::default();
        h.send(1, 10, Kind::Ok, 0, Some(0)).send(1, 11, Kind::Ok, 0, Some(1));
        h.reads(7, Function::FinalRead, &[(0, 0, 10)]);
        assert_eq!(h.kinds(), vec![AnomalyKind::Lost]);
    }

    #[test]
    fn a_duplicate_is_reported() {
        let mut h = H::default();
        h.send(1, 10, Kind::Info, 0, None).send(2, 11, Kind::Ok, 0, Some(2));
        h.reads(7, Function::FinalRead, &[(0, 0, 10), (0, 1, 10), (0, 2, 11)]);
        assert_eq!(h.kinds(), vec![AnomalyKind::Duplicate]);
    }

    #[test]
    fn duplicates_of_at_least_once_producers_are_counted_not_reported() {
        let mut h = H::default();
        h.send(3, 10, Kind::Ok, 0, Some(1));
        h.reads(7, Function::FinalRead, &[(0, 0, 10), (0, 1, 10)]);
        let verdict = check_with(&h.0, &[3].into());
        assert!(verdict.valid());
        assert_eq!(verdict.at_least_once_duplicates, 1);
        assert_eq!(h.kinds(), vec![AnomalyKind::Duplicate], "an idempotent producer may not");
    }

    #[test]
    fn an_inconsistent_offset_is_reported() {
        let mut h = clean();
        h.reads(6, Function::Poll, &[(0, 1, 12)]);
        assert!(h.kinds().contains(&AnomalyKind::InconsistentOffset));
    }

    #[test]
    fn an_acknowledged_offset_holding_another_value_is_reported() {
        let mut h = H::default();
        h.send(1, 10, Kind::Ok, 0, Some(1)).send(2, 11, Kind::Ok, 0, Some(0));
        h.reads(7, Function::FinalRead, &[(0, 0, 10), (0, 1, 11)]);
        assert_eq!(h.kinds(), vec![AnomalyKind::WrongOffset, AnomalyKind::WrongOffset]);
    }

    #[test]
    fn a_producer_going_backwards_is_reported() {
        let mut h = H::default();
        h.send(1, 10, Kind::Ok, 0, Some(1)).send(1, 11, Kind::Ok, 0, Some(0));
        h.reads(7, Function::FinalRead, &[(0, 0, 11), (0, 1, 10)]);
        assert_eq!(h.kinds(), vec![AnomalyKind::NonMonotonicSend]);
    }

    #[test]
    fn acknowledgements_arriving_out_of_send_order_are_fine() {
        let mut h = H::default();
        // Two pipelined sends: 11 is acknowledged first, at the higher offset.
        let invoke = |value| {
            let mut e = Event::new(1, Kind::Invoke, Function::Send, 0);
            e.value = Some(value);
            e.partition = Some(0);
            e
        };
        let (first, second) = (invoke(10), invoke(11));
        h.push(first).push(second);
        let ack = |value, offset| {
            let mut e = Event::new(1, Kind::Ok, Function::Send, 1);
            e.value = Some(value);
            e.partition = Some(0);
            e.offset = Some(offset);
            e
        };
        let (late, early) = (ack(11, 1), ack(10, 0));
        h.push(late).push(early);
        h.reads(7, Function::FinalRead, &[(0, 0, 10), (0, 1, 11)]);
        assert!(h.kinds().is_empty(), "{:?}", h.kinds());
    }

    #[test]
    fn a_poll_skip_and_a_poll_going_backwards_are_reported() {
        let mut h = clean();
        h.reads(8, Function::Poll, &[(0, 0, 10)]).reads(8, Function::Poll, &[(0, 2, 12)]);
        assert_eq!(h.kinds(), vec![AnomalyKind::PollSkip]);
        let mut h = clean();
        h.reads(8, Function::Poll, &[(0, 1, 11)]).reads(8, Function::Poll, &[(0, 0, 10)]);
        assert_eq!(h.kinds(), vec![AnomalyKind::NonMonotonicPoll]);
    }

    #[test]
    fn a_new_assignment_starts_a_consumer_afresh() {
        let mut h = clean();
        h.reads(8, Function::Poll, &[(0, 1, 11)]);
        let mut assign = Event::new(8, Kind::Ok, Function::Assign, 5);
        assign.partition = Some(0);
        h.push(assign);
        h.reads(8, Function::Poll, &[(0, 0, 10)]);
        assert!(h.kinds().is_empty(), "re-reading after a rebalance is allowed");
    }

    #[test]
    fn an_aborted_read_is_reported() {
        let mut h = clean();
        h.reads(8, Function::Poll, &[(0, 3, 13)]);
        assert_eq!(h.kinds(), vec![AnomalyKind::AbortedRead]);
    }

    #[test]
    fn a_committed_offset_regression_is_reported() {
        let mut h = clean();
        h.commit(0, 2);
        assert_eq!(h.kinds(), vec![AnomalyKind::CommittedOffsetRegression]);
    }

    #[test]
    fn values_only_the_final_read_found_are_unseen_not_lost() {
        let mut h = H::default();
        h.send(1, 10, Kind::Ok, 0, Some(0));
        h.reads(7, Function::FinalRead, &[(0, 0, 10)]);
        let verdict = check(&h.0);
        assert!(verdict.valid());
        assert_eq!(verdict.unseen, 1);
    }
}
