//! One consumer group's membership state machine (Kafka's classic group protocol).
//!
//! States: `Empty` → `PreparingRebalance` (members (re)join) → `CompletingRebalance` (the
//! leader computes assignments; clients run the assignor) → `Stable` (SyncGroup handed them
//! out). A join, a leave, a protocol change or an expired session starts a rebalance; the join
//! phase ends when every member has rejoined (after the initial delay for a new group) or at the
//! rebalance deadline, when members that did not rejoin are dropped. Static members
//! (`group.instance.id`) keep their assignment across a restart: a rejoin with a known
//! instance id replaces the old member id without a rebalance when nothing else changed.
//!
//! Pure logic over `Instant`s the caller passes in, so it is unit-tested without sockets; the
//! coordinator (`groups/mod.rs`) owns the locking, persistence and timers.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;

use super::records::{GroupValue, StoredMember};

/// Group states, with Kafka's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// What a member learns when the join phase ends.
#[derive(Clone, Debug)]
pub(crate) struct Joined {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: every member's id, instance id and subscription metadata.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

pub(crate) type JoinAnswer = Result<Joined, (ResponseError, String)>;
pub(crate) type SyncAnswer = Result<(String, String, Bytes), ResponseError>;

/// A JoinGroup as the coordinator passes it in.
pub(crate) struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: an unknown dynamic member first gets its id with MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

/// The answer now, or later (when the join phase ends).
pub(crate) enum Outcome<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

#[derive(Debug)]
pub(crate) struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    join_waiter: Option<oneshot::Sender<JoinAnswer>>,
    sync_waiter: Option<oneshot::Sender<SyncAnswer>>,
    last_heard: Instant,
}

impl Member {
    /// The subscription metadata for `protocol`.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(name, _)| name == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
}

/// Settings the coordinator applies to every group.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupSettings {
    pub initial_rebalance_delay: Duration,
    pub session_timeout_min: Duration,
    pub session_timeout_max: Duration,
}

/// One group.
#[derive(Debug)]
pub(crate) struct Group {
    pub id: String,
    pub state: State,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Instance id → member id of static members.
    static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED and not joined yet, with their expiry.
    pending: HashMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    initial_delay_until: Option<Instant>,
    /// Membership changed in a way worth persisting (a new generation was handed out).
    dirty: bool,
    next_member: u64,
}

/// A member id: the instance or client id, then a part unique within the group (the counter is
/// per group; the clock part separates coordinator incarnations after a failover).
fn new_member_id(client_id: &str, instance_id: Option<&str>, counter: u64) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{:x}{:04x}", instance_id.unwrap_or(client_id), nanos & 0xffff_ffff_ffff, counter & 0xffff)
}

impl Group {
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            initial_delay_until: None,
            dirty: false,
            next_member: 0,
        }
    }

    /// A group as the offsets partition last recorded it; members count as just heard from.
    pub fn restore(id: &str, value: GroupValue, now: Instant) -> Group {
        let mut group = Group::new(id);
        group.generation = value.generation;
        group.protocol_type = value.protocol_type;
        group.protocol = value.protocol.clone();
        group.leader = value.leader;
        for stored in value.members {
            if let Some(instance) = &stored.instance_id {
                group.static_members.insert(instance.clone(), stored.id.clone());
            }
            let protocols = vec![(value.protocol.clone().unwrap_or_default(), Bytes::from(stored.subscription))];
            let member = Member {
                id: stored.id.clone(),
                instance_id: stored.instance_id,
                client_id: stored.client_id,
                client_host: stored.client_host,
                session_timeout: Duration::from_millis(stored.session_timeout_ms),
                rebalance_timeout: Duration::from_millis(stored.rebalance_timeout_ms),
                protocols,
                assignment: Bytes::from(stored.assignment),
                join_waiter: None,
                sync_waiter: None,
                last_heard: now,
            };
            group.members.insert(stored.id, member);
        }
        group.state = if group.members.is_empty() { State::Empty } else { State::Stable };
        group
    }

    /// What is persisted of the group.
    pub fn value(&self) -> GroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members: self
                .members
                .values()
                .map(|m| StoredMember {
                    id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as u64,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    subscription: m.metadata(&protocol).to_vec(),
                    assignment: m.assignment.to_vec(),
                })
                .collect(),
        }
    }

    /// Takes the "worth persisting" flag.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    fn joined(&self, member_id: &str) -> Joined {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members.values().map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol))).collect()
        } else {
            Vec::new()
        };
        Joined {
            generation: self.generation,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol,
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    /// Whether the member's protocols are compatible with the group's.
    fn compatible(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref().is_some_and(|t| t != protocol_type) {
            return false;
        }
        // At least one protocol every member (and this one) supports.
        protocols.iter().any(|(name, _)| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == name)))
    }

    /// JoinGroup.
    pub fn join(&mut self, request: JoinRequest, settings: &GroupSettings, now: Instant) -> Outcome<JoinAnswer> {
        let refuse = |error: ResponseError, member_id: &str| Outcome::Now(Err((error, member_id.to_string())));
        if request.session_timeout < settings.session_timeout_min
            || request.session_timeout > settings.session_timeout_max
        {
            return refuse(ResponseError::InvalidSessionTimeout, &request.member_id);
        }
        let known = self.members.contains_key(&request.member_id);
        // Compatibility is judged against the others: a member changing its own protocols is fine.
        let compatible = {
            let own = if known { self.members.remove(&request.member_id) } else { None };
            let compatible = self.compatible(&request.protocol_type, &request.protocols);
            if let Some(own) = own {
                self.members.insert(own.id.clone(), own);
            }
            compatible
        };
        if !compatible {
            return refuse(ResponseError::InconsistentGroupProtocol, &request.member_id);
        }
        self.pending.retain(|_, expiry| *expiry > now);

        let member_id = if request.member_id.is_empty() {
            if let Some(instance) = &request.instance_id {
                if let Some(old_id) = self.static_members.get(instance).cloned() {
                    return self.rejoin_static(old_id, request, now);
                }
                self.next_member += 1;
                let id = new_member_id(&request.client_id, Some(instance), self.next_member);
                self.static_members.insert(instance.clone(), id.clone());
                self.add_member(id.clone(), &request, now);
                id
            } else {
                self.next_member += 1;
                let id = new_member_id(&request.client_id, None, self.next_member);
                if request.require_known_member_id {
                    self.pending.insert(id.clone(), now + request.session_timeout);
                    return refuse(ResponseError::MemberIdRequired, &id);
                }
                self.add_member(id.clone(), &request, now);
                id
            }
        } else if known {
            if let Some(instance) = &request.instance_id {
                if self.static_members.get(instance) != Some(&request.member_id) {
                    return refuse(ResponseError::FencedInstanceId, &request.member_id);
                }
            }
            let member = self.members.get_mut(&request.member_id).expect("known");
            let changed = member.protocols != request.protocols;
            member.protocols = request.protocols.clone();
            member.session_timeout = request.session_timeout;
            member.rebalance_timeout = request.rebalance_timeout;
            member.last_heard = now;
            let is_leader = self.leader.as_deref() == Some(request.member_id.as_str());
            match self.state {
                // A follower rejoining with nothing new gets the current generation back.
                State::Stable | State::CompletingRebalance if !changed && !is_leader => {
                    return Outcome::Now(Ok(self.joined(&request.member_id)));
                }
                _ => {}
            }
            request.member_id.clone()
        } else if self.pending.remove(&request.member_id).is_some() {
            self.add_member(request.member_id.clone(), &request, now);
            request.member_id.clone()
        } else if let Some(instance) = &request.instance_id {
            match self.static_members.get(instance) {
                Some(_) => return refuse(ResponseError::FencedInstanceId, &request.member_id),
                None => return refuse(ResponseError::UnknownMemberId, &request.member_id),
            }
        } else {
            return refuse(ResponseError::UnknownMemberId, &request.member_id);
        };

        let (sender, receiver) = oneshot::channel();
        let member = self.members.get_mut(&member_id).expect("added above");
        if let Some(previous) = member.join_waiter.replace(sender) {
            let _ = previous.send(Err((ResponseError::RebalanceInProgress, member_id.clone())));
        }
        match self.state {
            State::PreparingRebalance => {
                // A new member during the initial delay pushes it back, within the deadline.
                if let (Some(until), Some(deadline)) = (self.initial_delay_until, self.rebalance_deadline) {
                    if until > now {
                        self.initial_delay_until = Some((now + settings.initial_rebalance_delay).min(deadline));
                    }
                }
            }
            _ => self.prepare_rebalance(settings, now),
        }
        self.try_complete_join(now);
        Outcome::Later(receiver)
    }

    fn add_member(&mut self, id: String, request: &JoinRequest, now: Instant) {
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        let member = Member {
            id: id.clone(),
            instance_id: request.instance_id.clone(),
            client_id: request.client_id.clone(),
            client_host: request.client_host.clone(),
            session_timeout: request.session_timeout,
            rebalance_timeout: request.rebalance_timeout,
            protocols: request.protocols.clone(),
            assignment: Bytes::new(),
            join_waiter: None,
            sync_waiter: None,
            last_heard: now,
        };
        self.members.insert(id, member);
    }

    /// A static member restarted: the new member id takes the old one's place (the old id is
    /// fenced). Without a protocol change a stable group keeps its generation and assignment.
    fn rejoin_static(&mut self, old_id: String, request: JoinRequest, now: Instant) -> Outcome<JoinAnswer> {
        let instance = request.instance_id.clone().expect("static");
        self.next_member += 1;
        let new_id = new_member_id(&request.client_id, Some(&instance), self.next_member);
        let Some(mut member) = self.members.remove(&old_id) else {
            self.static_members.remove(&instance);
            return Outcome::Now(Err((ResponseError::UnknownMemberId, request.member_id)));
        };
        if let Some(waiter) = member.join_waiter.take() {
            let _ = waiter.send(Err((ResponseError::FencedInstanceId, old_id.clone())));
        }
        if let Some(waiter) = member.sync_waiter.take() {
            let _ = waiter.send(Err(ResponseError::FencedInstanceId));
        }
        let changed = member.protocols != request.protocols;
        member.id = new_id.clone();
        member.client_id = request.client_id.clone();
        member.client_host = request.client_host.clone();
        member.session_timeout = request.session_timeout;
        member.rebalance_timeout = request.rebalance_timeout;
        member.protocols = request.protocols.clone();
        member.last_heard = now;
        self.members.insert(new_id.clone(), member);
        self.static_members.insert(instance, new_id.clone());
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        self.dirty = true;
        if self.state == State::Stable && !changed {
            let mut joined = self.joined(&new_id);
            joined.members.clear(); // the assignment stands: the leader has nothing to compute
            return Outcome::Now(Ok(joined));
        }
        let (sender, receiver) = oneshot::channel();
        self.members.get_mut(&new_id).expect("inserted").join_waiter = Some(sender);
        if self.state != State::PreparingRebalance {
            let settings = GroupSettings {
                initial_rebalance_delay: Duration::ZERO,
                session_timeout_min: Duration::ZERO,
                session_timeout_max: Duration::MAX,
            };
            self.prepare_rebalance(&settings, now);
        }
        self.try_complete_join(now);
        Outcome::Later(receiver)
    }

    /// Starts a rebalance: members must rejoin before the deadline.
    fn prepare_rebalance(&mut self, settings: &GroupSettings, now: Instant) {
        if self.state == State::CompletingRebalance {
            for member in self.members.values_mut() {
                if let Some(waiter) = member.sync_waiter.take() {
                    let _ = waiter.send(Err(ResponseError::RebalanceInProgress));
                }
            }
        }
        let timeout = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or(Duration::ZERO);
        let deadline = now + timeout;
        self.initial_delay_until = (self.state == State::Empty && !settings.initial_rebalance_delay.is_zero())
            .then(|| (now + settings.initial_rebalance_delay).min(deadline));
        self.state = State::PreparingRebalance;
        self.rebalance_deadline = Some(deadline);
    }

    /// Ends the join phase when every member has rejoined (and the initial delay passed) or
    /// at the deadline, dropping the members that did not rejoin.
    pub fn try_complete_join(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        let delayed = self.initial_delay_until.is_some_and(|until| now < until);
        let overdue = self.rebalance_deadline.is_some_and(|deadline| now >= deadline);
        if !(overdue || (all_joined && !delayed)) {
            return;
        }
        let gone: Vec<String> =
            self.members.values().filter(|m| m.join_waiter.is_none()).map(|m| m.id.clone()).collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.generation += 1;
        self.rebalance_deadline = None;
        self.initial_delay_until = None;
        self.dirty = true;
        if self.members.is_empty() {
            self.state = State::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = self.select_protocol();
        if !self.leader.as_ref().is_some_and(|l| self.members.contains_key(l)) {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = State::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let joined = self.joined(&id);
            let member = self.members.get_mut(&id).expect("listed");
            member.assignment = Bytes::new();
            member.last_heard = now;
            if let Some(waiter) = member.join_waiter.take() {
                let _ = waiter.send(Ok(joined));
            }
        }
    }

    /// Kafka's vote: among protocols every member supports, each member votes for the first of
    /// its own list; the most votes win (ties go to the leader candidate's order).
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == *name)))
            .collect();
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|c| (0, *c)).collect();
        for member in self.members.values() {
            if let Some((_, choice)) = member.protocols.iter().find(|(name, _)| candidates.contains(&name)) {
                if let Some(entry) = votes.iter_mut().find(|(_, c)| *c == choice) {
                    entry.0 += 1;
                }
            }
        }
        let best = votes.iter().map(|(count, _)| *count).max()?;
        votes.into_iter().find(|(count, _)| *count == best).map(|(_, name)| name.clone())
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(member) = self.members.remove(id) {
            if let Some(instance) = &member.instance_id {
                if self.static_members.get(instance).map(String::as_str) == Some(id) {
                    self.static_members.remove(instance);
                }
            }
            if let Some(waiter) = member.join_waiter {
                let _ = waiter.send(Err((ResponseError::UnknownMemberId, id.to_string())));
            }
            if let Some(waiter) = member.sync_waiter {
                let _ = waiter.send(Err(ResponseError::UnknownMemberId));
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// Checks member id, instance id and generation of a request from a member.
    fn check_member(&self, member_id: &str, instance_id: Option<&str>, generation: i32) -> Result<(), ResponseError> {
        if let Some(instance) = instance_id {
            match self.static_members.get(instance) {
                Some(current) if current != member_id => return Err(ResponseError::FencedInstanceId),
                _ => {}
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(())
    }

    /// SyncGroup: the leader hands in the assignments; everyone gets theirs.
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Outcome<SyncAnswer> {
        if let Err(error) = self.check_member(member_id, instance_id, generation) {
            return Outcome::Now(Err(error));
        }
        self.members.get_mut(member_id).expect("checked").last_heard = now;
        let answer = |group: &Group, id: &str| {
            let assignment = group.members.get(id).map(|m| m.assignment.clone()).unwrap_or_default();
            Ok((
                group.protocol_type.clone().unwrap_or_default(),
                group.protocol.clone().unwrap_or_default(),
                assignment,
            ))
        };
        match self.state {
            State::Empty => Outcome::Now(Err(ResponseError::UnknownMemberId)),
            State::PreparingRebalance => Outcome::Now(Err(ResponseError::RebalanceInProgress)),
            State::Stable => Outcome::Now(answer(self, member_id)),
            State::CompletingRebalance => {
                let (sender, receiver) = oneshot::channel();
                self.members.get_mut(member_id).expect("checked").sync_waiter = Some(sender);
                if self.leader.as_deref() == Some(member_id) {
                    for (id, assignment) in assignments {
                        if let Some(member) = self.members.get_mut(&id) {
                            member.assignment = assignment;
                        }
                    }
                    self.state = State::Stable;
                    self.dirty = true;
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        let reply = answer(self, &id);
                        if let Some(waiter) = self.members.get_mut(&id).and_then(|m| m.sync_waiter.take()) {
                            let _ = waiter.send(reply);
                        }
                    }
                }
                Outcome::Later(receiver)
            }
        }
    }

    /// Whether an OffsetCommit may be accepted (Kafka's order of checks): a standalone commit
    /// (generation -1) only to a group without members; otherwise a current member of the
    /// current generation, not while assignments are being computed.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> Result<(), ResponseError> {
        if generation < 0 && self.state == State::Empty {
            return Ok(());
        }
        if self.state == State::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        self.check_member(member_id, instance_id, generation)?;
        self.members.get_mut(member_id).expect("checked").last_heard = now;
        Ok(())
    }

    /// Heartbeat: keeps the session alive and tells the member whether to rejoin.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> Result<(), ResponseError> {
        if self.state == State::Empty {
            return Err(ResponseError::UnknownMemberId);
        }
        self.check_member(member_id, instance_id, generation)?;
        self.members.get_mut(member_id).expect("checked").last_heard = now;
        match self.state {
            State::PreparingRebalance => Err(ResponseError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// LeaveGroup of one member (by member id, or by instance id for static members).
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        settings: &GroupSettings,
        now: Instant,
    ) -> Result<(), ResponseError> {
        let id = match instance_id {
            Some(instance) => match self.static_members.get(instance) {
                Some(current) if member_id.is_empty() || current == member_id => current.clone(),
                Some(_) => return Err(ResponseError::FencedInstanceId),
                None => return Err(ResponseError::UnknownMemberId),
            },
            None if self.members.contains_key(member_id) => member_id.to_string(),
            None => return Err(ResponseError::UnknownMemberId),
        };
        self.remove_member(&id);
        self.membership_changed(settings, now);
        Ok(())
    }

    fn membership_changed(&mut self, settings: &GroupSettings, now: Instant) {
        match self.state {
            State::Stable | State::CompletingRebalance => {
                if self.members.is_empty() {
                    self.state = State::Empty;
                    self.generation += 1;
                    self.protocol = None;
                    self.leader = None;
                    self.dirty = true;
                } else {
                    self.prepare_rebalance(settings, now);
                }
            }
            State::PreparingRebalance => self.try_complete_join(now),
            State::Empty => {}
        }
    }

    /// Expires silent members and ends a due join phase. Members waiting in a join are alive
    /// (the rebalance deadline bounds them instead).
    pub fn tick(&mut self, settings: &GroupSettings, now: Instant) {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join_waiter.is_none() && now.duration_since(m.last_heard) > m.session_timeout)
            .map(|m| m.id.clone())
            .collect();
        if !expired.is_empty() {
            for id in &expired {
                self.remove_member(id);
            }
            self.membership_changed(settings, now);
        }
        self.try_complete_join(now);
    }

    /// Whether the group can be deleted (DeleteGroups).
    pub fn is_empty(&self) -> bool {
        self.state == State::Empty
    }

    /// Drops every waiter with NOT_COORDINATOR (this node lost the partition).
    pub fn abandon(&mut self) {
        for member in self.members.values_mut() {
            if let Some(waiter) = member.join_waiter.take() {
                let _ = waiter.send(Err((ResponseError::NotCoordinator, member.id.clone())));
            }
            if let Some(waiter) = member.sync_waiter.take() {
                let _ = waiter.send(Err(ResponseError::NotCoordinator));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GroupSettings {
        GroupSettings {
            initial_rebalance_delay: Duration::from_millis(100),
            session_timeout_min: Duration::from_millis(10),
            session_timeout_max: Duration::from_secs(60),
        }
    }

    fn request(member_id: &str, instance: Option<&str>, protocols: &[&str]) -> JoinRequest {
        JoinRequest {
            member_id: member_id.into(),
            instance_id: instance.map(str::to_string),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(1),
            rebalance_timeout: Duration::from_secs(5),
            protocol_type: "consumer".into(),
            protocols: protocols.iter().map(|p| (p.to_string(), Bytes::from(p.to_string()))).collect(),
            require_known_member_id: true,
        }
    }

    fn now_answer<T: std::fmt::Debug>(outcome: Outcome<T>) -> T {
        match outcome {
            Outcome::Now(answer) => answer,
            Outcome::Later(_) => panic!("expected an immediate answer"),
        }
    }

    fn later<T>(outcome: Outcome<T>) -> oneshot::Receiver<T> {
        match outcome {
            Outcome::Later(receiver) => receiver,
            Outcome::Now(_) => panic!("expected to wait"),
        }
    }

    /// Joins a dynamic member through MEMBER_ID_REQUIRED; returns the receiver of its answer.
    fn join_new(group: &mut Group, now: Instant, protocols: &[&str]) -> (String, oneshot::Receiver<JoinAnswer>) {
        let (error, id) = now_answer(group.join(request("", None, protocols), &settings(), now)).unwrap_err();
        assert_eq!(error, ResponseError::MemberIdRequired);
        (id.clone(), later(group.join(request(&id, None, protocols), &settings(), now)))
    }

    #[test]
    fn two_members_join_sync_and_a_silent_one_is_expired() {
        let mut group = Group::new("g");
        let t0 = Instant::now();
        let (a, mut a_join) = join_new(&mut group, t0, &["range", "roundrobin"]);
        let (b, mut b_join) = join_new(&mut group, t0, &["roundrobin", "range"]);
        group.tick(&settings(), t0 + Duration::from_millis(50));
        assert!(a_join.try_recv().is_err(), "the initial delay holds the join phase open");
        group.tick(&settings(), t0 + Duration::from_millis(150));
        let joined_a = a_join.try_recv().unwrap().unwrap();
        let joined_b = b_join.try_recv().unwrap().unwrap();
        assert_eq!((joined_a.generation, joined_b.generation), (1, 1));
        assert_eq!(joined_a.leader, a);
        assert_eq!(joined_a.members.len(), 2, "the leader sees every member");
        assert!(joined_b.members.is_empty());
        assert_eq!(group.state, State::CompletingRebalance);

        let t1 = t0 + Duration::from_millis(200);
        let mut b_sync = later(group.sync(&b, None, 1, vec![], t1));
        let assignments = vec![(a.clone(), Bytes::from_static(b"A")), (b.clone(), Bytes::from_static(b"B"))];
        let mut a_sync = later(group.sync(&a, None, 1, assignments, t1));
        assert_eq!(a_sync.try_recv().unwrap().unwrap().2, Bytes::from_static(b"A"));
        assert_eq!(b_sync.try_recv().unwrap().unwrap().2, Bytes::from_static(b"B"));
        assert_eq!(group.state, State::Stable);
        assert!(group.take_dirty());

        // b keeps heartbeating, a goes silent past its session timeout.
        let t2 = t1 + Duration::from_millis(900);
        group.heartbeat(&b, None, 1, t2).unwrap();
        group.tick(&settings(), t1 + Duration::from_millis(1100));
        assert_eq!(group.state, State::PreparingRebalance);
        assert_eq!(group.heartbeat(&b, None, 1, t2), Err(ResponseError::RebalanceInProgress));
        assert_eq!(group.heartbeat(&a, None, 1, t2), Err(ResponseError::UnknownMemberId));
        let mut b_rejoin = later(group.join(request(&b, None, &["roundrobin", "range"]), &settings(), t2));
        let joined = b_rejoin.try_recv().unwrap().unwrap();
        assert_eq!((joined.generation, joined.leader.as_str()), (2, b.as_str()));
        assert_eq!(group.sync(&b, None, 1, vec![], t2).now(), Some(Err(ResponseError::IllegalGeneration)));
    }

    #[test]
    fn protocols_must_overlap_and_the_vote_picks_the_common_favourite() {
        let mut group = Group::new("g");
        let t0 = Instant::now();
        let (_a, _ra) = join_new(&mut group, t0, &["range", "roundrobin"]);
        let (_b, _rb) = join_new(&mut group, t0, &["roundrobin", "range"]);
        let (_c, _rc) = join_new(&mut group, t0, &["roundrobin"]);
        let refused = now_answer(group.join(request("", None, &["sticky"]), &settings(), t0));
        assert_eq!(refused.unwrap_err().0, ResponseError::InconsistentGroupProtocol);
        group.tick(&settings(), t0 + Duration::from_secs(1));
        assert_eq!(group.protocol.as_deref(), Some("roundrobin"));
    }

    #[test]
    fn members_that_do_not_rejoin_are_dropped_at_the_rebalance_deadline() {
        let mut group = Group::new("g");
        let t0 = Instant::now();
        let (a, _ra) = join_new(&mut group, t0, &["range"]);
        let (b, _rb) = join_new(&mut group, t0, &["range"]);
        group.tick(&settings(), t0 + Duration::from_millis(200));
        let t1 = t0 + Duration::from_millis(300);
        let _ = group.sync(&b, None, 1, vec![], t1);
        let _ = group.sync(&a, None, 1, vec![], t1);
        // A third member joins: a rebalance; only `a` rejoins.
        let (_c, mut rc) = join_new(&mut group, t1, &["range"]);
        let _ra2 = later(group.join(request(&a, None, &["range"]), &settings(), t1));
        group.heartbeat(&b, None, 1, t1 + Duration::from_millis(500)).unwrap_err();
        group.tick(&settings(), t1 + Duration::from_secs(5));
        let joined = rc.try_recv().unwrap().unwrap();
        assert_eq!(joined.generation, 2);
        assert!(!group.members.contains_key(&b), "b never rejoined");
        assert_eq!(group.members.len(), 2);
    }

    #[test]
    fn a_restarted_static_member_takes_its_place_without_a_rebalance() {
        let mut group = Group::new("g");
        let t0 = Instant::now();
        let mut first = later(group.join(request("", Some("i-1"), &["range"]), &settings(), t0));
        let (b, _rb) = join_new(&mut group, t0, &["range"]);
        group.tick(&settings(), t0 + Duration::from_millis(200));
        let joined = first.try_recv().unwrap().unwrap();
        let a = joined.member_id;
        let leader = joined.leader;
        let follower = if leader == a { b.clone() } else { a.clone() };
        let _ = group.sync(&follower, Some("i-1").filter(|_| follower == a), 1, vec![], t0);
        let _ = group.sync(
            &leader,
            Some("i-1").filter(|_| leader == a),
            1,
            vec![(a.clone(), Bytes::from_static(b"A"))],
            t0,
        );
        assert_eq!(group.state, State::Stable);

        let rejoined = now_answer(group.join(request("", Some("i-1"), &["range"]), &settings(), t0)).unwrap();
        assert_ne!(rejoined.member_id, a);
        assert_eq!((rejoined.generation, group.state), (1, State::Stable), "no rebalance");
        let mine = group.sync(&rejoined.member_id, Some("i-1"), 1, vec![], t0).now().unwrap().unwrap();
        assert_eq!(mine.2, Bytes::from_static(b"A"), "the assignment stays with the instance");
        assert_eq!(group.heartbeat(&a, Some("i-1"), 1, t0), Err(ResponseError::FencedInstanceId));
        group.leave("", Some("i-1"), &settings(), t0).unwrap();
        assert_eq!(group.state, State::PreparingRebalance);
    }

    #[test]
    fn the_persisted_value_restores_a_stable_group() {
        let mut group = Group::new("g");
        let t0 = Instant::now();
        let (a, _ra) = join_new(&mut group, t0, &["range"]);
        group.tick(&settings(), t0 + Duration::from_millis(200));
        let _ = group.sync(&a, None, 1, vec![(a.clone(), Bytes::from_static(b"A"))], t0);
        let restored = Group::restore("g", group.value(), t0);
        assert_eq!((restored.state, restored.generation), (State::Stable, 1));
        let mut restored = restored;
        restored.heartbeat(&a, None, 1, t0).unwrap();
        let mine = restored.sync(&a, None, 1, vec![], t0).now().unwrap().unwrap();
        assert_eq!(mine.2, Bytes::from_static(b"A"));
    }

    impl<T> Outcome<T> {
        fn now(self) -> Option<T> {
            match self {
                Outcome::Now(answer) => Some(answer),
                Outcome::Later(_) => None,
            }
        }
    }
}
