//! Kafka error codes for what the replicated log reports.

use kafka_protocol::ResponseError;
use replication::Error;

/// The Kafka error a client acts on for a partition-level failure.
pub(crate) fn partition_error(error: &Error) -> ResponseError {
    match error {
        // Retriable: the client refreshes metadata and goes to the new leader.
        Error::NotLeader { leader: Some(_) } | Error::Stopped => ResponseError::NotLeaderOrFollower,
        Error::NotLeader { leader: None } | Error::NotReady => ResponseError::LeaderNotAvailable,
        Error::Timeout | Error::Overloaded => ResponseError::RequestTimedOut,
        Error::UnknownTopic(_) | Error::UnknownPartition { .. } => ResponseError::UnknownTopicOrPartition,
        Error::TopicExists(_) => ResponseError::TopicAlreadyExists,
        Error::InvalidRequest(_) => ResponseError::InvalidRequest,
        Error::Engine(_) => ResponseError::KafkaStorageError,
        Error::Log(error) => log_error(error),
        Error::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        Error::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
    }
}

fn log_error(error: &log_store::Error) -> ResponseError {
    use log_store::Error as Log;
    match error {
        Log::MalformedBatch(_) | Log::CrcMismatch { .. } | Log::UnsupportedMagic(_) => ResponseError::CorruptMessage,
        Log::InvalidRecord(_) => ResponseError::InvalidRecord,
        Log::UnsupportedCompression(_) => ResponseError::UnsupportedCompressionType,
        Log::BatchTooLarge { .. } => ResponseError::MessageTooLarge,
        Log::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        _ => ResponseError::KafkaStorageError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replication::NodeId;

    #[test]
    fn leadership_errors_are_retriable_and_bad_batches_are_not() {
        assert!(partition_error(&Error::NotLeader { leader: Some(NodeId(2)) }).is_retriable());
        assert!(partition_error(&Error::NotLeader { leader: None }).is_retriable());
        assert!(partition_error(&Error::Timeout).is_retriable());
        let crc = Error::Log(log_store::Error::CrcMismatch { stored: 1, computed: 2 });
        assert_eq!(partition_error(&crc), ResponseError::CorruptMessage);
        let big = Error::Log(log_store::Error::BatchTooLarge { size: 2, max: 1 });
        assert_eq!(partition_error(&big), ResponseError::MessageTooLarge);
    }
}
