//! One client connection: length-prefixed frames in, responses out in request order.
//!
//! A reader task decodes frames and starts each request's handler as its own task; up to
//! `pipelined_requests_max` run at once (librdkafka keeps five produce requests in flight per
//! connection). A writer task awaits the handlers in request order and writes their responses,
//! as Kafka requires. A frame that cannot be understood — bad length, unknown API key,
//! unsupported version, undecodable header or body — is logged once and closes this connection
//! only, after the responses to the requests before it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::broker::Broker;
use crate::versions;

/// A request's outcome: the encoded response body, or none (acks = 0 produce).
pub(crate) type Reply = Result<Option<BytesMut>, Malformed>;

/// Why a request could not be answered; the connection closes.
#[derive(Debug)]
pub(crate) struct Malformed(pub String);

impl Malformed {
    pub fn new(what: impl Into<String>) -> Malformed {
        Malformed(what.into())
    }
}

/// A decoded request on its way to a handler.
pub(crate) struct Request {
    /// The client's address.
    pub peer: SocketAddr,
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
}

impl Request {
    /// Decodes the body as `T` (bytes after it are ignored).
    pub fn decode<T: Decodable>(&mut self) -> Result<T, Malformed> {
        T::decode(&mut self.body, self.version)
            .map_err(|error| Malformed::new(format!("cannot decode {:?} v{}: {error}", self.api_key, self.version)))
    }
}

/// Encodes a response body for `version`.
pub(crate) fn encode<T: Encodable>(response: &T, version: i16) -> Reply {
    let mut body = BytesMut::with_capacity(response.compute_size(version).unwrap_or(64));
    response
        .encode(&mut body, version)
        .map_err(|error| Malformed::new(format!("cannot encode a response: {error}")))?;
    Ok(Some(body))
}

pub(crate) struct Connection {
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
}

/// A response on its way to the writer: correlation id, response header version, handler.
struct Pending {
    correlation_id: i32,
    header_version: i16,
    reply: JoinHandle<Reply>,
}

impl Connection {
    pub fn new(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr, stop: watch::Receiver<bool>) -> Connection {
        Connection { broker, stream, peer, stop }
    }

    pub async fn run(self) {
        let Connection { broker, stream, peer, mut stop } = self;
        let (reader, writer) = stream.into_split();
        let (pending_sender, pending) = mpsc::channel(broker.config.pipelined_requests_max.max(1));
        let writer = tokio::spawn(write_responses(writer, pending, peer));
        tokio::select! {
            outcome = read_requests(reader, &broker, pending_sender, peer) => {
                if let Err(reason) = outcome {
                    info!(%peer, %reason, "closing kafka connection");
                }
            }
            _ = crate::broker::stopping(&mut stop) => {}
        }
        let _ = writer.await;
    }
}

/// Reads frames until the client closes or sends something not understood.
async fn read_requests(
    mut reader: OwnedReadHalf,
    broker: &Arc<Broker>,
    pending: mpsc::Sender<Pending>,
    peer: SocketAddr,
) -> Result<(), String> {
    let limit = broker.config.request_bytes_max;
    let mut auth = crate::sasl_gate::Gate::new(broker.authenticator.is_some());
    loop {
        let size = match reader.read_i32().await {
            Ok(size) => size,
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(format!("read failed: {error}")),
        };
        if size < 8 || size as usize > limit {
            return Err(format!("frame of {size} bytes (allowed 8..={limit})"));
        }
        let mut frame = BytesMut::zeroed(size as usize);
        reader.read_exact(&mut frame).await.map_err(|error| format!("read failed mid-frame: {error}"))?;
        let frame = frame.freeze();
        let (request, header_version) = parse(frame, peer)?;
        let correlation_id = request.header.correlation_id;
        if matches!(request.api_key, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate) {
            // Answered here, before the next frame is read: the outcome decides what may follow.
            let (reply, verdict) = auth.handle(broker, request, peer);
            let reply = tokio::spawn(async move { reply });
            if pending.send(Pending { correlation_id, header_version, reply }).await.is_err() {
                return Ok(());
            }
            match verdict {
                Ok(()) => continue,
                Err(reason) => return Err(reason),
            }
        }
        if !auth.allows(request.api_key) {
            return Err(format!("{:?} before SASL authentication", request.api_key));
        }
        let reply = if request.api_key == ApiKey::Produce {
            // Proposed here, in request order; only the wait for the commit runs apart.
            tokio::spawn(crate::produce::start(broker, request))
        } else {
            let broker = broker.clone();
            tokio::spawn(async move { crate::broker::handle(&broker, request).await })
        };
        if pending.send(Pending { correlation_id, header_version, reply }).await.is_err() {
            return Ok(()); // the writer closed the connection and said why
        }
    }
}

/// Splits a frame into its header and body, checking the API key and version.
pub(crate) fn parse(mut frame: Bytes, peer: SocketAddr) -> Result<(Request, i16), String> {
    let key = (&frame[0..2]).get_i16();
    let version = (&frame[2..4]).get_i16();
    let api_key = ApiKey::try_from(key).map_err(|()| format!("unknown API key {key}"))?;
    if api_key == ApiKey::ApiVersions && !versions::is_supported(api_key, version) {
        // KIP-511: answer a too-new ApiVersions with a v0 body listing what we support. Its
        // header may be flexible (v3+ requests are), so read only the fixed-size prefix.
        let correlation_id = (&frame[4..8]).get_i32();
        let header = RequestHeader::default()
            .with_request_api_key(key)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id);
        return Ok((Request { peer, api_key, version, header, body: Bytes::new() }, 0));
    }
    if !versions::is_supported(api_key, version) {
        return Err(format!("unsupported version {version} of {api_key:?}"));
    }
    let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version))
        .map_err(|error| format!("undecodable request header: {error}"))?;
    let header_version = api_key.response_header_version(version);
    Ok((Request { peer, api_key, version, header, body: frame }, header_version))
}

/// Writes responses in request order until the reader is done and every handler answered.
async fn write_responses(writer: OwnedWriteHalf, mut pending: mpsc::Receiver<Pending>, peer: SocketAddr) {
    let mut writer = BufWriter::new(writer);
    while let Some(next) = pending.recv().await {
        let reply = match next.reply.await {
            Ok(reply) => reply,
            Err(error) => Err(Malformed::new(format!("request handler failed: {error}"))),
        };
        let body = match reply {
            Ok(Some(body)) => body,
            Ok(None) => continue,
            Err(Malformed(reason)) => {
                info!(%peer, %reason, "closing kafka connection");
                break;
            }
        };
        let mut head = BytesMut::with_capacity(16);
        let header = ResponseHeader::default().with_correlation_id(next.correlation_id);
        if header.encode(&mut head, next.header_version).is_err() {
            break;
        }
        let mut frame = BytesMut::with_capacity(4);
        frame.put_i32((head.len() + body.len()) as i32);
        let written = async {
            writer.write_all(&frame).await?;
            writer.write_all(&head).await?;
            writer.write_all(&body).await?;
            // Flush when nothing else is ready, so pipelined responses share a write.
            if pending.is_empty() {
                writer.flush().await?;
            }
            std::io::Result::Ok(())
        };
        if let Err(error) = written.await {
            debug!(%peer, %error, "kafka client went away");
            break;
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}
