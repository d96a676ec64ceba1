//! Which APIs and versions this broker speaks, and the ApiVersions answer built from that.
//!
//! Only what is fully implemented is listed. Produce lists 0–11 although v0–2 (message formats
//! v0/v1) are refused: an ApiVersions answer starting at 3 makes older librdkafka stop
//! compressing.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use crate::connection::{encode, Reply, Request};

/// (API, lowest version, highest version).
pub(crate) const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::ApiVersions, 0, 4),
    // v0 would switch the connection to raw SASL tokens; clients use v1 when it is offered.
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::EndTxn, 0, 3),
];

pub(crate) fn is_supported(api_key: ApiKey, version: i16) -> bool {
    SUPPORTED.iter().any(|(key, min, max)| *key == api_key && (*min..=*max).contains(&version))
}

/// ApiVersions: the table above. A version newer than ours gets UNSUPPORTED_VERSION with the
/// table in a v0 body (KIP-511), and the client retries with a version from it.
pub(crate) fn api_versions(request: &Request) -> Reply {
    let api_keys = SUPPORTED
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default().with_api_key(*key as i16).with_min_version(*min).with_max_version(*max)
        })
        .collect();
    let mut response = ApiVersionsResponse::default().with_api_keys(api_keys);
    if is_supported(ApiKey::ApiVersions, request.version) {
        encode(&response, request.version)
    } else {
        response.error_code = ResponseError::UnsupportedVersion.code();
        encode(&response, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Message;

    /// Every listed version must be one the codec can decode, except Produce v0–2 (listed on
    /// purpose, refused at decode).
    #[test]
    fn listed_versions_are_within_the_codec() {
        for (key, min, max) in SUPPORTED {
            let codec = key.valid_versions();
            let min = if *key == ApiKey::Produce { 3 } else { *min };
            assert!(codec.min <= min && *max <= codec.max, "{key:?} {min}..={max} outside {codec:?}");
        }
        assert_eq!(kafka_protocol::messages::ProduceRequest::VERSIONS.min, 3);
    }
}
