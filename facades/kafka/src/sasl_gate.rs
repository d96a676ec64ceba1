//! One connection's SASL state: which requests it may send, and SaslHandshake (v1) and
//! SaslAuthenticate (v0–2) answered in order by the connection's reader (see `sasl` for the
//! mechanisms themselves).

use std::net::SocketAddr;

use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::info;

use crate::broker::Broker;
use crate::connection::{encode, Reply, Request};
use crate::sasl::{Exchange, Round};

pub(crate) struct Gate {
    required: bool,
    authenticated: bool,
    exchange: Option<Exchange>,
}

impl Gate {
    pub fn new(required: bool) -> Gate {
        Gate { required, authenticated: false, exchange: None }
    }

    /// Whether a request of this API may be served now.
    pub fn allows(&self, api_key: ApiKey) -> bool {
        !self.required || self.authenticated || api_key == ApiKey::ApiVersions
    }

    /// Answers SaslHandshake or SaslAuthenticate; `Err` closes the connection after the answer.
    pub fn handle(&mut self, broker: &Broker, mut request: Request, peer: SocketAddr) -> (Reply, Result<(), String>) {
        let version = request.version;
        if request.api_key == ApiKey::SaslHandshake {
            let body: SaslHandshakeRequest = match request.decode() {
                Ok(body) => body,
                Err(error) => return (Err(error), Err("undecodable SaslHandshake".into())),
            };
            let offered: Vec<StrBytes> = broker
                .authenticator
                .as_ref()
                .map(|a| a.mechanism_names().into_iter().map(StrBytes::from_static_str).collect())
                .unwrap_or_default();
            let mut response = SaslHandshakeResponse::default().with_mechanisms(offered);
            let exchange = broker.authenticator.as_ref().and_then(|a| a.start(&body.mechanism));
            let verdict = if self.authenticated {
                response.error_code = ResponseError::IllegalSaslState.code();
                Err("SaslHandshake after authentication".to_string())
            } else if let Some(exchange) = exchange {
                self.exchange = Some(exchange);
                Ok(())
            } else {
                response.error_code = ResponseError::UnsupportedSaslMechanism.code();
                Err(format!("SASL mechanism {:?} is not offered", body.mechanism.as_str()))
            };
            if let Err(reason) = &verdict {
                info!(%peer, %reason, "refusing SASL handshake");
            }
            return (encode(&response, version), verdict);
        }
        let body: SaslAuthenticateRequest = match request.decode() {
            Ok(body) => body,
            Err(error) => return (Err(error), Err("undecodable SaslAuthenticate".into())),
        };
        let mut response = SaslAuthenticateResponse::default();
        let (Some(authenticator), Some(exchange)) = (broker.authenticator.as_ref(), self.exchange.as_mut()) else {
            response.error_code = ResponseError::IllegalSaslState.code();
            response.error_message = Some(StrBytes::from_static_str("SaslAuthenticate without a SaslHandshake"));
            return (encode(&response, version), Err("SaslAuthenticate without a SaslHandshake".into()));
        };
        let verdict = match exchange.step(authenticator, &body.auth_bytes) {
            Round::Continue(bytes) => {
                response.auth_bytes = bytes.into();
                Ok(())
            }
            Round::Authenticated { user, reply } => {
                info!(%peer, %user, "kafka client authenticated");
                response.auth_bytes = reply.into();
                self.authenticated = true;
                self.exchange = None;
                Ok(())
            }
            Round::Failed(reason) => {
                info!(%peer, %reason, "kafka client failed to authenticate");
                response.error_code = ResponseError::SaslAuthenticationFailed.code();
                response.error_message = Some(StrBytes::from_string(reason.clone()));
                Err(reason)
            }
        };
        (encode(&response, version), verdict)
    }
}
