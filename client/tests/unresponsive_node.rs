//! A node that accepts connections and never answers (paused, or its connection half-open
//! behind a network cut) costs a call one request timeout per attempt, and the retry deadline
//! then ends the call with an error: calls never hang. A transaction coordinator once waited
//! for ever on such a forward, and the transaction stayed prepared for good.

use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_answers_fails_the_call_instead_of_hanging_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    // Accept and hold every connection; never read, never write.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = client::Client::new(vec![address])
        .with_request_timeout(Duration::from_millis(500))
        .with_retry_deadline(Duration::from_secs(2));
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), client.list_topics()).await;
    let result = outcome.expect("the call hung on a node that never answers");
    assert!(result.is_err(), "a node that never answers cannot have listed topics");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let records = [client::record(None, b"x")];
    let produce = tokio::time::timeout(Duration::from_secs(30), client.produce("t", 0, &records));
    assert!(produce.await.expect("a produce hung on a node that never answers").is_err());
}
