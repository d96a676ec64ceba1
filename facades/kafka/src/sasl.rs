//! SASL authentication of Kafka connections: PLAIN and SCRAM-SHA-256/512 (RFC 5802, 7677),
//! through SaslHandshake v1 and SaslAuthenticate (KIP-152). Off unless users are configured.
//!
//! Users and passwords come from the node's configuration. At start each password is turned
//! into SCRAM credentials (random salt, 4096 PBKDF2 iterations) per hash; PLAIN compares the
//! password in constant time. A connection that sends anything but ApiVersions, SaslHandshake
//! and SaslAuthenticate before it is authenticated is closed; a failed authentication is
//! answered with SASL_AUTHENTICATION_FAILED and then closed.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Digest;
use sha2::{Sha256, Sha512};

/// Iterations of PBKDF2 for the credentials made at start (Kafka's minimum and default).
const ITERATIONS: u32 = 4096;

/// A SASL mechanism this broker can offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mechanism {
    /// `PLAIN`: user and password in the clear (use on trusted networks or under TLS).
    Plain,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
}

impl Mechanism {
    /// The mechanism's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism of a name.
    pub fn parse(name: &str) -> Option<Mechanism> {
        [Mechanism::Plain, Mechanism::ScramSha256, Mechanism::ScramSha512].into_iter().find(|m| m.name() == name)
    }
}

/// What the listener accepts.
#[derive(Clone, Debug)]
pub struct SaslConfig {
    /// Mechanisms offered, in preference order.
    pub mechanisms: Vec<Mechanism>,
    /// User name → password.
    pub users: BTreeMap<String, String>,
}

/// SCRAM credentials of one user for one hash.
#[derive(Clone, Debug)]
struct ScramCredential {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

/// The listener's users, ready for authentication.
#[derive(Debug)]
pub(crate) struct Authenticator {
    mechanisms: Vec<Mechanism>,
    passwords: BTreeMap<String, String>,
    scram: BTreeMap<(Mechanism, String), ScramCredential>,
}

/// HMAC with the mechanism's hash.
fn hmac(mechanism: Mechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    match mechanism {
        Mechanism::ScramSha512 => {
            let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes keys of any size");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        _ => {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
    }
}

/// The mechanism's hash.
fn hash(mechanism: Mechanism, data: &[u8]) -> Vec<u8> {
    match mechanism {
        Mechanism::ScramSha512 => Sha512::digest(data).to_vec(),
        _ => Sha256::digest(data).to_vec(),
    }
}

/// SaltedPassword := Hi(password, salt, i), PBKDF2 with the mechanism's HMAC.
fn salted_password(mechanism: Mechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    match mechanism {
        Mechanism::ScramSha512 => {
            let mut salted = vec![0u8; 64];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut salted);
            salted
        }
        _ => {
            let mut salted = vec![0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
            salted
        }
    }
}

fn credential(mechanism: Mechanism, password: &str, salt: Vec<u8>, iterations: u32) -> ScramCredential {
    let salted = salted_password(mechanism, password.as_bytes(), &salt, iterations);
    let client_key = hmac(mechanism, &salted, b"Client Key");
    ScramCredential {
        salt,
        iterations,
        stored_key: hash(mechanism, &client_key),
        server_key: hmac(mechanism, &salted, b"Server Key"),
    }
}

fn random_bytes(count: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; count];
    getrandom::getrandom(&mut bytes).expect("the OS random source works");
    bytes
}

/// Constant-time equality of two byte strings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    pub fn new(config: &SaslConfig) -> Authenticator {
        let mut scram = BTreeMap::new();
        for mechanism in config.mechanisms.iter().filter(|m| **m != Mechanism::Plain) {
            for (user, password) in &config.users {
                let credential = credential(*mechanism, password, random_bytes(16), ITERATIONS);
                scram.insert((*mechanism, user.clone()), credential);
            }
        }
        Authenticator { mechanisms: config.mechanisms.clone(), passwords: config.users.clone(), scram }
    }

    /// Mechanism names, for SaslHandshake answers.
    pub fn mechanism_names(&self) -> Vec<&'static str> {
        self.mechanisms.iter().map(|m| m.name()).collect()
    }

    /// Starts an exchange with a mechanism the client chose, if offered.
    pub fn start(&self, name: &str) -> Option<Exchange> {
        let mechanism = Mechanism::parse(name).filter(|m| self.mechanisms.contains(m))?;
        Some(Exchange { mechanism, step: Step::Start })
    }
}

/// One connection's authentication in progress.
#[derive(Debug)]
pub(crate) struct Exchange {
    mechanism: Mechanism,
    step: Step,
}

#[derive(Debug)]
enum Step {
    Start,
    /// SCRAM: the server-first message was sent.
    ServerFirst {
        user: String,
        nonce: String,
        client_first_bare: String,
        server_first: String,
    },
    Done,
}

/// What a SaslAuthenticate round produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Round {
    /// Send these bytes; the client continues.
    Continue(Vec<u8>),
    /// Authenticated as this user; send these (final) bytes.
    Authenticated { user: String, reply: Vec<u8> },
    /// Refused, with the reason for the log and the client.
    Failed(String),
}

impl Exchange {
    /// Processes the client's next token.
    pub fn step(&mut self, authenticator: &Authenticator, token: &[u8]) -> Round {
        self.step_with(authenticator, token, random_bytes(18))
    }

    fn step_with(&mut self, authenticator: &Authenticator, token: &[u8], server_nonce: Vec<u8>) -> Round {
        match std::mem::replace(&mut self.step, Step::Done) {
            Step::Start if self.mechanism == Mechanism::Plain => plain(authenticator, token),
            Step::Start => match self.client_first(authenticator, token, &server_nonce) {
                Ok(reply) => Round::Continue(reply),
                Err(reason) => Round::Failed(reason),
            },
            Step::ServerFirst { user, nonce, client_first_bare, server_first } => {
                let message = ClientFinal { user, nonce, client_first_bare, server_first };
                self.client_final(authenticator, token, message)
            }
            Step::Done => Round::Failed("the authentication is already over".into()),
        }
    }

    fn client_first(
        &mut self,
        authenticator: &Authenticator,
        token: &[u8],
        server_nonce: &[u8],
    ) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(token).map_err(|_| "the SCRAM client-first message is not UTF-8")?;
        // gs2-header: "n,," or "y,," or "n,a=authzid," — channel binding is not offered.
        let mut parts = text.splitn(3, ',');
        let binding = parts.next().unwrap_or_default();
        let _authzid = parts.next().ok_or("malformed SCRAM client-first message")?;
        let bare = parts.next().ok_or("malformed SCRAM client-first message")?;
        if binding != "n" && binding != "y" {
            return Err("SCRAM channel binding is not supported".into());
        }
        let mut user = None;
        let mut client_nonce = None;
        for attribute in bare.split(',') {
            if let Some(name) = attribute.strip_prefix("n=") {
                user = Some(name.replace("=2C", ",").replace("=3D", "="));
            } else if let Some(nonce) = attribute.strip_prefix("r=") {
                client_nonce = Some(nonce.to_string());
            }
        }
        let (user, client_nonce) = user.zip(client_nonce).ok_or("SCRAM client-first lacks the user or the nonce")?;
        let credential = authenticator.scram.get(&(self.mechanism, user.clone()));
        // An unknown user gets a made-up salt so the exchange looks the same; it fails at the end.
        let (salt, iterations) = match credential {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (random_bytes(16), ITERATIONS),
        };
        let nonce = format!("{client_nonce}{}", BASE64.encode(server_nonce));
        let server_first = format!("r={nonce},s={},i={iterations}", BASE64.encode(salt));
        self.step =
            Step::ServerFirst { user, nonce, client_first_bare: bare.to_string(), server_first: server_first.clone() };
        Ok(server_first.into_bytes())
    }

    fn client_final(&mut self, authenticator: &Authenticator, token: &[u8], state: ClientFinal) -> Round {
        let Ok(text) = std::str::from_utf8(token) else {
            return Round::Failed("the SCRAM client-final message is not UTF-8".into());
        };
        let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
            return Round::Failed("the SCRAM client-final message has no proof".into());
        };
        let nonce_ok = without_proof.split(',').any(|a| a.strip_prefix("r=") == Some(state.nonce.as_str()));
        let Ok(proof) = BASE64.decode(proof) else { return Round::Failed("undecodable SCRAM proof".into()) };
        let Some(credential) = authenticator.scram.get(&(self.mechanism, state.user.clone())) else {
            return Round::Failed(format!("authentication failed for user {:?}", state.user));
        };
        let auth_message = format!("{},{},{without_proof}", state.client_first_bare, state.server_first);
        let signature = hmac(self.mechanism, &credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let hashed = hash(self.mechanism, &client_key);
        let server_signature = hmac(self.mechanism, &credential.server_key, auth_message.as_bytes());
        if !nonce_ok || proof.len() != signature.len() || !same(&hashed, &credential.stored_key) {
            return Round::Failed(format!("authentication failed for user {:?}", state.user));
        }
        Round::Authenticated { user: state.user, reply: format!("v={}", BASE64.encode(server_signature)).into_bytes() }
    }
}

struct ClientFinal {
    user: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

/// PLAIN: `authzid \0 user \0 password` (RFC 4616).
fn plain(authenticator: &Authenticator, token: &[u8]) -> Round {
    let mut parts = token.split(|b| *b == 0);
    let (Some(_authzid), Some(user), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Round::Failed("malformed PLAIN token".into());
    };
    let user = String::from_utf8_lossy(user).to_string();
    match authenticator.passwords.get(&user) {
        Some(expected) if same(expected.as_bytes(), password) => Round::Authenticated { user, reply: Vec::new() },
        _ => Round::Failed(format!("authentication failed for user {user:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(mechanisms: Vec<Mechanism>) -> Authenticator {
        let users = [("user".to_string(), "pencil".to_string())].into();
        Authenticator::new(&SaslConfig { mechanisms, users })
    }

    /// RFC 7677's SCRAM-SHA-256 example, with its salt and server nonce.
    #[test]
    fn the_rfc_7677_exchange_succeeds() {
        let mut auth = authenticator(vec![Mechanism::ScramSha256]);
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credential = credential(Mechanism::ScramSha256, "pencil", salt, 4096);
        auth.scram.insert((Mechanism::ScramSha256, "user".into()), credential);
        let mut exchange = auth.start("SCRAM-SHA-256").unwrap();
        // The RFC's combined nonce is the client nonce + "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"; ours
        // appends base64 of the server nonce bytes, so use bytes whose encoding is that string's
        // stand-in and compute the proof the way a client does.
        let server_nonce = b"server-nonce-bytes".to_vec();
        let first = exchange.step_with(&auth, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", server_nonce.clone());
        let Round::Continue(server_first) = first else { panic!("{first:?}") };
        let server_first = String::from_utf8(server_first).unwrap();
        let nonce = format!("rOprNGfwEbeRWgbNEkqO{}", BASE64.encode(&server_nonce));
        assert_eq!(server_first, format!("r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"));
        // The client side of RFC 5802.
        let mut salted = vec![0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(
            b"pencil",
            &BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
            &mut salted,
        );
        let client_key = hmac(Mechanism::ScramSha256, &salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("n=user,r=rOprNGfwEbeRWgbNEkqO,{server_first},{without_proof}");
        let signature = hmac(Mechanism::ScramSha256, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        let final_message = format!("{without_proof},p={}", BASE64.encode(&proof));
        let server_key = hmac(Mechanism::ScramSha256, &salted, b"Server Key");
        let expected =
            format!("v={}", BASE64.encode(hmac(Mechanism::ScramSha256, &server_key, auth_message.as_bytes())));
        assert_eq!(
            exchange.step_with(&auth, final_message.as_bytes(), Vec::new()),
            Round::Authenticated { user: "user".into(), reply: expected.into_bytes() }
        );
    }

    #[test]
    fn the_rfc_7677_salted_password_gives_its_proof() {
        // RFC 7677 §3 with its own nonces: the client proof must be the RFC's.
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let mut salted = vec![0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"pencil", &salt, 4096, &mut salted);
        let client_key = hmac(Mechanism::ScramSha256, &salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let signature = hmac(Mechanism::ScramSha256, &stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
        assert_eq!(BASE64.encode(proof), "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        let server_key = hmac(Mechanism::ScramSha256, &salted, b"Server Key");
        let server_signature = hmac(Mechanism::ScramSha256, &server_key, auth_message.as_bytes());
        assert_eq!(BASE64.encode(server_signature), "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn wrong_passwords_unknown_users_and_garbage_fail() {
        let auth = authenticator(vec![Mechanism::Plain, Mechanism::ScramSha512]);
        let mut exchange = auth.start("PLAIN").unwrap();
        assert!(matches!(exchange.step(&auth, b"\0user\0pencil"), Round::Authenticated { .. }));
        for token in [&b"\0user\0pen"[..], b"\0nobody\0pencil", b"garbage", b"\0user\0pencil\0extra"] {
            let mut exchange = auth.start("PLAIN").unwrap();
            assert!(matches!(exchange.step(&auth, token), Round::Failed(_)), "{token:?}");
        }
        assert!(auth.start("SCRAM-SHA-256").is_none(), "not offered");
        assert!(auth.start("GSSAPI").is_none());
        let mut exchange = auth.start("SCRAM-SHA-512").unwrap();
        assert!(matches!(exchange.step(&auth, b"n,,n=nobody,r=abc"), Round::Continue(_)), "no user enumeration");
        assert!(matches!(exchange.step(&auth, b"c=biws,r=abc,p=AAAA"), Round::Failed(_)));
        let mut exchange = auth.start("SCRAM-SHA-512").unwrap();
        assert!(matches!(exchange.step(&auth, &[0xff, 0xfe]), Round::Failed(_)));
    }
}
