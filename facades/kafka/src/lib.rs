//! Kafka wire-protocol façade over the replicated log. Empty until issue 4.
