//! Raw Kafka requests for tests that need exact control over what a client sends: frames encoded
//! with the `kafka-protocol` crate over a blocking socket.

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use log_store::batch::{BatchBuilder, Compression, NewRecord};

pub fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_string()))
}

/// Sends one request and returns the decoded response body's bytes after the header.
pub fn call<T: Encodable>(
    stream: &mut TcpStream,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("versions-test")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, api_key.request_header_version(version)).unwrap();
    body.encode(&mut buf, version).unwrap_or_else(|e| panic!("encoding {api_key:?} v{version}: {e}"));
    let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&buf);
    stream.write_all(&frame).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap_or_else(|e| panic!("{api_key:?} v{version}: no answer ({e})"));
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response).unwrap();
    let mut response = Bytes::from(response);
    let header = ResponseHeader::decode(&mut response, api_key.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, correlation_id, "{api_key:?} v{version}");
    response
}

pub fn decode<T: Decodable>(mut body: Bytes, api_key: ApiKey, version: i16) -> T {
    T::decode(&mut body, version).unwrap_or_else(|e| panic!("decoding the {api_key:?} v{version} answer: {e}"))
}

pub fn batch() -> Bytes {
    idempotent_batch(-1, -1, -1)
}

pub fn idempotent_batch(producer_id: i64, epoch: i16, sequence: i32) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None).producer(producer_id, epoch, sequence);
    builder.push(&NewRecord { key: None, value: Some(Bytes::from_static(b"v")), headers: Vec::new(), timestamp: 1 });
    Bytes::from(builder.build().unwrap())
}
