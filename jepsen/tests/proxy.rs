//! The fault proxy on real sockets: bytes pass through, a cut holds them until the heal, a
//! delay holds each chunk at least that long, and a lossy link still delivers everything, in
//! order.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use jepsen::proxy::Proxies;

/// An echo server on loopback; returns its address.
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(read) = stream.read(&mut buffer) {
                    if read == 0 || stream.write_all(&buffer[..read]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// Node 1 → node 2's echo server, through the proxy of (1, 2).
fn connect(proxies: &Proxies) -> TcpStream {
    let via = proxies.dial_via(1);
    let address = via[0].strip_prefix("2=").unwrap();
    let stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Duration {
    let start = Instant::now();
    stream.write_all(message).unwrap();
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, message, "bytes come back unchanged and in order");
    start.elapsed()
}

#[test]
fn cut_delay_and_loss_act_on_real_connections() {
    let targets = BTreeMap::from([(1, echo_server()), (2, echo_server())]);
    let proxies = Proxies::start(&targets, 7).unwrap();
    assert_eq!(proxies.dial_via(1).len(), 1, "one proxy per ordered pair");
    let mut stream = connect(&proxies);
    round_trip(&mut stream, b"hello");

    // Cut: nothing comes back while cut; everything after the heal.
    proxies.cut(&BTreeSet::from([(1, 2)]));
    stream.write_all(b"held").unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buffer = [0u8; 4];
    assert!(stream.read(&mut buffer).is_err(), "a cut link passes nothing");
    proxies.heal();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.read_exact(&mut buffer).unwrap();
    assert_eq!(&buffer, b"held", "held bytes arrive after the heal");

    // Delay: each direction holds a chunk at least the delay (jitter is ± half of it).
    proxies.degrade(&BTreeSet::from([2]), |link| {
        link.delay = Duration::from_millis(100);
        link.jitter = Duration::ZERO;
    });
    assert!(round_trip(&mut stream, b"slow") >= Duration::from_millis(200), "two delayed hops");
    proxies.heal();

    // Loss: lost chunks still arrive (a retransmission timeout late, doubling per repeated
    // loss), in order; some round trip pays at least one timeout.
    proxies.degrade(&BTreeSet::from([1]), |link| link.loss = 0.3);
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let slowest = (0..20u32).map(|i| round_trip(&mut stream, format!("message {i}").as_bytes())).max().unwrap();
    assert!(slowest >= Duration::from_millis(200), "a lost chunk waits the retransmission timeout");
    proxies.heal();
}
