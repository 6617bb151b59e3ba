//! The harness relay itself: forwards, cuts, heals.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn echo() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(addr: std::net::SocketAddr) -> bool {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"ping"
}

#[tokio::test]
async fn relay_forwards_cuts_and_heals() {
    let relay = sentinel_tests::Relay::start(echo().await).await;
    assert!(round_trip(relay.addr).await);
    let mut open = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    open.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    open.read_exact(&mut one).await.unwrap();
    relay.cut();
    let mut rest = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(1), open.read(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an open connection is cut"
    );
    assert!(
        !round_trip(relay.addr).await,
        "new connections are refused while cut"
    );
    relay.heal();
    assert!(round_trip(relay.addr).await, "healed");
    relay.set_latency(50);
    let started = std::time::Instant::now();
    assert!(round_trip(relay.addr).await);
    assert!(started.elapsed() >= Duration::from_millis(100));
}
