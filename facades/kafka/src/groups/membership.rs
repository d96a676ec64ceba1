//! JoinGroup, SyncGroup, Heartbeat and LeaveGroup (the classic group protocol), and the admin
//! APIs DescribeGroups, ListGroups and DeleteGroups.
//!
//! Each handler decodes, runs the group's state machine under the coordinator's lock, and
//! waits (outside the lock) when the answer comes at the end of a join phase or with the
//! leader's assignment.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    ListGroupsRequest, ListGroupsResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::group::{JoinAnswer, JoinRequest, Outcome, SyncAnswer};
use super::records::RecordKey;
use crate::broker::Broker;
use crate::connection::{encode, Reply, Request};

fn text(value: impl Into<String>) -> StrBytes {
    StrBytes::from_string(value.into())
}

fn millis(ms: i32) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

pub(crate) async fn join_group(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let client_id = request.header.client_id.as_ref().map(|id| id.to_string()).unwrap_or_default();
    let client_host = format!("/{}", request.peer.ip());
    let body: JoinGroupRequest = request.decode()?;
    let group_id = body.group_id.0.to_string();
    let requested_member = body.member_id.to_string();
    let join = JoinRequest {
        member_id: requested_member.clone(),
        instance_id: body.group_instance_id.map(|id| id.to_string()),
        client_id,
        client_host,
        session_timeout: millis(body.session_timeout_ms),
        // v0 has no rebalance timeout: the session timeout serves.
        rebalance_timeout: millis(if version >= 1 { body.rebalance_timeout_ms } else { body.session_timeout_ms }),
        protocol_type: body.protocol_type.to_string(),
        protocols: body.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect(),
        require_known_member_id: version >= 4,
    };
    let settings = broker.coordinator.settings;
    let outcome = broker
        .coordinator
        .with_group(broker, &group_id, true, |state, context| {
            let state = state.expect("created on demand");
            let outcome = state.group.join(join, &settings, Instant::now());
            super::persist_membership(context, state);
            outcome
        })
        .await;
    let answer: JoinAnswer = match outcome {
        Err(error) => Err((error, requested_member.clone())),
        Ok(Outcome::Now(answer)) => answer,
        Ok(Outcome::Later(waiting)) => {
            waiting.await.unwrap_or_else(|_| Err((ResponseError::NotCoordinator, requested_member.clone())))
        }
    };
    let mut response = JoinGroupResponse::default().with_protocol_name(Some(text("")));
    match answer {
        Ok(joined) => {
            response.generation_id = joined.generation;
            response.protocol_name = Some(text(joined.protocol));
            if version >= 7 {
                response.protocol_type = Some(text(joined.protocol_type));
            }
            response.leader = text(joined.leader);
            response.member_id = text(joined.member_id);
            response.members = joined
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(text(id))
                        .with_group_instance_id(if version >= 5 { instance.map(text) } else { None })
                        .with_metadata(metadata)
                })
                .collect();
        }
        Err((error, member_id)) => {
            response.error_code = error.code();
            response.generation_id = -1;
            response.member_id = text(member_id);
        }
    }
    encode(&response, version)
}

pub(crate) async fn sync_group(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: SyncGroupRequest = request.decode()?;
    let group_id = body.group_id.0.to_string();
    let member_id = body.member_id.to_string();
    let instance_id = body.group_instance_id.map(|id| id.to_string());
    let assignments: Vec<(String, Bytes)> =
        body.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect();
    let outcome = broker
        .coordinator
        .with_group(broker, &group_id, false, |state, context| match state {
            None => Outcome::Now(Err(ResponseError::UnknownMemberId)),
            Some(state) => {
                let outcome = state.group.sync(
                    &member_id,
                    instance_id.as_deref(),
                    body.generation_id,
                    assignments,
                    Instant::now(),
                );
                super::persist_membership(context, state);
                outcome
            }
        })
        .await;
    let answer: SyncAnswer = match outcome {
        Err(error) => Err(error),
        Ok(Outcome::Now(answer)) => answer,
        Ok(Outcome::Later(waiting)) => waiting.await.unwrap_or(Err(ResponseError::NotCoordinator)),
    };
    let mut response = SyncGroupResponse::default();
    match answer {
        Ok((protocol_type, protocol, assignment)) => {
            if version >= 5 {
                response.protocol_type = Some(text(protocol_type));
                response.protocol_name = Some(text(protocol));
            }
            response.assignment = assignment;
        }
        Err(error) => response.error_code = error.code(),
    }
    encode(&response, version)
}

pub(crate) async fn heartbeat(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: HeartbeatRequest = request.decode()?;
    let member_id = body.member_id.to_string();
    let instance_id = body.group_instance_id.map(|id| id.to_string());
    let outcome = broker
        .coordinator
        .with_group(broker, &body.group_id.0, false, |state, _| match state {
            None => Err(ResponseError::UnknownMemberId),
            Some(state) => {
                state.group.heartbeat(&member_id, instance_id.as_deref(), body.generation_id, Instant::now())
            }
        })
        .await
        .and_then(|result| result);
    let error = outcome.err().map_or(0, |error| error.code());
    encode(&HeartbeatResponse::default().with_error_code(error), version)
}

pub(crate) async fn leave_group(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: LeaveGroupRequest = request.decode()?;
    let leaving: Vec<(String, Option<String>)> = if version >= 3 {
        body.members
            .iter()
            .map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|i| i.to_string())))
            .collect()
    } else {
        vec![(body.member_id.to_string(), None)]
    };
    let settings = broker.coordinator.settings;
    let outcome = broker
        .coordinator
        .with_group(broker, &body.group_id.0, false, |state, context| {
            let Some(state) = state else {
                return leaving.iter().map(|_| Err(ResponseError::UnknownMemberId)).collect::<Vec<_>>();
            };
            let now = Instant::now();
            let results = leaving
                .iter()
                .map(|(id, instance)| state.group.leave(id, instance.as_deref(), &settings, now))
                .collect();
            super::persist_membership(context, state);
            results
        })
        .await;
    let mut response = LeaveGroupResponse::default();
    match outcome {
        Err(error) => response.error_code = error.code(),
        Ok(results) => {
            if version >= 3 {
                response.members = leaving
                    .into_iter()
                    .zip(&results)
                    .map(|((id, instance), result)| {
                        MemberResponse::default()
                            .with_member_id(text(id))
                            .with_group_instance_id(instance.map(text))
                            .with_error_code(result.err().map_or(0, |e| e.code()))
                    })
                    .collect();
            } else if let Some(Err(error)) = results.first() {
                response.error_code = error.code();
            }
        }
    }
    encode(&response, version)
}

pub(crate) async fn describe_groups(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: DescribeGroupsRequest = request.decode()?;
    let mut described = Vec::with_capacity(body.groups.len());
    for group_id in body.groups {
        let id = group_id.0.to_string();
        let outcome = broker
            .coordinator
            .with_group(broker, &id, false, |state, _| {
                let Some(state) = state else {
                    return DescribedGroup::default().with_group_state(text("Dead"));
                };
                let group = &state.group;
                let protocol = group.protocol.clone().unwrap_or_default();
                let members = group
                    .members
                    .values()
                    .map(|m| {
                        DescribedGroupMember::default()
                            .with_member_id(text(m.id.clone()))
                            .with_group_instance_id(if version >= 4 { m.instance_id.clone().map(text) } else { None })
                            .with_client_id(text(m.client_id.clone()))
                            .with_client_host(text(m.client_host.clone()))
                            .with_member_metadata(m.metadata(&protocol))
                            .with_member_assignment(m.assignment.clone())
                    })
                    .collect();
                DescribedGroup::default()
                    .with_group_state(text(group.state.name()))
                    .with_protocol_type(text(group.protocol_type.clone().unwrap_or_default()))
                    .with_protocol_data(text(protocol))
                    .with_members(members)
            })
            .await;
        let group = match outcome {
            Ok(group) => group,
            Err(error) => DescribedGroup::default().with_error_code(error.code()),
        };
        described.push(group.with_group_id(GroupId(text(id))));
    }
    encode(&DescribeGroupsResponse::default().with_groups(described), version)
}

pub(crate) async fn list_groups(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: ListGroupsRequest = request.decode()?;
    let wanted: Vec<String> = body.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let groups = broker
        .coordinator
        .list()
        .into_iter()
        .filter(|(_, _, state)| wanted.is_empty() || wanted.contains(&state.to_lowercase()))
        .map(|(id, protocol_type, state)| {
            let listed =
                ListedGroup::default().with_group_id(GroupId(text(id))).with_protocol_type(text(protocol_type));
            if version >= 4 {
                listed.with_group_state(text(state))
            } else {
                listed
            }
        })
        .collect();
    encode(&ListGroupsResponse::default().with_groups(groups), version)
}

pub(crate) async fn delete_groups(broker: &Broker, request: &mut Request) -> Reply {
    let version = request.version;
    let body: DeleteGroupsRequest = request.decode()?;
    let mut results = Vec::with_capacity(body.groups_names.len());
    for group_id in body.groups_names {
        let id = group_id.0.to_string();
        let started = broker
            .coordinator
            .with_group(broker, &id, false, |state, context| {
                let Some(state) = state else { return Err(ResponseError::GroupIdNotFound) };
                if !state.group.is_empty() {
                    return Err(ResponseError::NonEmptyGroup);
                }
                let mut tombstones = vec![(RecordKey::Group { group: id.clone() }, None)];
                for (topic, partition) in state.offsets.keys() {
                    let key = RecordKey::Offset { group: id.clone(), topic: topic.clone(), partition: *partition };
                    tombstones.push((key, None));
                }
                Ok(context.write(super::records::batch(&tombstones)).0)
            })
            .await
            .and_then(|started| started);
        let outcome = match started {
            Ok(write) => write.await.map(|()| broker.coordinator.forget(broker, &id)),
            Err(error) => Err(error),
        };
        let error = outcome.err().map_or(0, |error| error.code());
        results.push(DeletableGroupResult::default().with_group_id(GroupId(text(id))).with_error_code(error));
    }
    encode(&DeleteGroupsResponse::default().with_results(results), version)
}
