//! Timeouts and connection bounds against the real binary (issue 11,
//! defect 4): every timeout in docs/configuration.md is enforced. Slow
//! request heads, idle HTTP/1 and HTTP/2 connections, response bodies that
//! run past the route deadline or stall, uploads that stall.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Sentinel, client, config, free_port, streaming_backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `config()` with extra nodes inside its listener block.
fn with_listener(port: u16, backend: SocketAddr, listener_extra: &str) -> String {
    config(port, &[backend], "", "").replace(
        &format!("address \"127.0.0.1:{port}\";"),
        &format!("address \"127.0.0.1:{port}\"; {listener_extra}"),
    )
}

/// Reads until the peer closes; `true` if it did within `timeout`.
async fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_crowd_is_cut_after_the_header_read_timeout() {
    let backend = streaming_backend("a").await;
    let port = free_port();
    let proxy = Sentinel::start(&with_listener(
        port,
        backend,
        "header-read-timeout-secs 1; keepalive-timeout-secs 60;",
    ))
    .await;
    let mut crowd = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        crowd.push(s);
    }
    // Others are still served while the crowd hangs on.
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let results = futures_util::future::join_all(
        crowd
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(10))),
    )
    .await;
    let open = results.iter().filter(|closed| !**closed).count();
    assert_eq!(open, 0, "{open} slow connections were never closed");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed too late: {:?}",
        started.elapsed()
    );
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keepalive_connection_is_closed_after_the_keepalive_timeout() {
    let backend = streaming_backend("a").await;
    let port = free_port();
    let proxy = Sentinel::start(&with_listener(
        port,
        backend,
        "keepalive-timeout-secs 1; header-read-timeout-secs 30;",
    ))
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(6)).await,
        "idle keep-alive connection still open"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_keepalive_timeout() {
    let backend = streaming_backend("a").await;
    let port = free_port();
    let proxy = Sentinel::start(&with_listener(
        port,
        backend,
        "http2 #true; keepalive-timeout-secs 1;",
    ))
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Connection preface and an empty SETTINGS frame, then nothing.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(6)).await,
        "idle HTTP/2 connection still open"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_do_not_hold_max_connections_forever() {
    let backend = streaming_backend("a").await;
    let port = free_port();
    let proxy = Sentinel::start(&with_listener(
        port,
        backend,
        "http2 #true; keepalive-timeout-secs 1; max-connections 2;",
    ))
    .await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        idle.push(s);
    }
    // Both slots are taken by idle h2 connections; a new client is served
    // once they time out.
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(8))
        .build()
        .unwrap();
    let r = c
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(idle);
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_streams_past_the_route_deadline_is_cut() {
    let backend = streaming_backend("a").await;
    let port = free_port();
    let cfg = config(port, &[backend], "", "").replace(
        "        upstream \"app\"\n    }\n}",
        "        upstream \"app\"\n        policies { timeout-secs 1; }\n    }\n}",
    );
    let proxy = Sentinel::start(&cfg).await;
    let started = Instant::now();
    let r = client()
        .get(format!("http://127.0.0.1:{port}/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the head comes at once");
    // The stream takes 4 s; the route allows 1 s for the whole exchange.
    let body = r.bytes().await;
    assert!(body.is_err(), "the body ran past the deadline uncut");
    assert!(
        started.elapsed() < Duration::from_millis(3000),
        "cut too late: {:?}",
        started.elapsed()
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_body_is_cut_after_the_read_timeout() {
    let backend = streaming_backend("a").await;
    let port = free_port();
    // 100 ms between chunks is fine with read 300 ms; the 4 s stream ends.
    let cfg = config(port, &[backend], "timeouts { read-ms 300; }", "");
    let proxy = Sentinel::start(&cfg).await;
    let r = client()
        .get(format!("http://127.0.0.1:{port}/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap().lines().count(), 40);
    // One chunk, then 5 s of silence: cut after the read timeout.
    let started = Instant::now();
    let r = client()
        .get(format!("http://127.0.0.1:{port}/stall"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "the stalled body was not cut");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "cut too late: {:?}",
        started.elapsed()
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_cut_after_the_write_timeout() {
    let backend = streaming_backend("a").await;
    let port = free_port();
    let cfg = config(port, &[backend], "timeouts { write-ms 500; }", "");
    let proxy = Sentinel::start(&cfg).await;
    for method in ["POST", "PUT"] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let head = format!("{method} /len HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[b'z'; 10]).await.unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "{method}: stalled upload answered {text:?} after {:?}",
            started.elapsed()
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_gives_up_after_its_timeout() {
    let a = common::Backend::start("a").await;
    a.delay_ms
        .store(30_000, std::sync::atomic::Ordering::SeqCst);
    let port = free_port();
    let cfg = config(
        port,
        &[a.addr],
        "",
        "server { graceful-shutdown-timeout-secs 1; }",
    );
    let mut proxy = Sentinel::start(&cfg).await;
    let url = format!("http://127.0.0.1:{port}/");
    let hanging = tokio::spawn(async move { client().get(url).send().await.is_ok() });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.hits() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    proxy.signal("TERM");
    let code = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{}", proxy.logs());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drain did not give up: {:?}",
        started.elapsed()
    );
    hanging.abort();
}

/// A loopback address whose accept queue is full: connecting to it hangs.
fn blackhole() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => return (socket, fillers, addr),
        }
    }
    panic!("could not fill the accept queue of {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_answers_502_quickly() {
    let (_socket, _fillers, hole) = tokio::task::spawn_blocking(blackhole).await.unwrap();
    let port = free_port();
    let cfg = config(
        port,
        &[hole],
        "timeouts { connect-ms 300; read-secs 20; request-secs 20; }\nretry { attempts 1; }",
        "",
    );
    let proxy = Sentinel::start(&cfg).await;
    let started = Instant::now();
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "connect timeout not applied: {:?}",
        started.elapsed()
    );
    // It was the timeout, not a refused connection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !proxy.logs().contains("deadline has elapsed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connect timeout in the log:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(proxy);
}

/// A backend that counts its open connections.
async fn counting_backend() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&open);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = std::sync::Arc::clone(&counter);
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_closed_after_the_pool_idle_timeout() {
    use std::sync::atomic::Ordering;
    let (backend, open) = counting_backend().await;
    let port = free_port();
    let cfg = config(
        port,
        &[backend],
        "connection-pool { idle-timeout-secs 1; }",
        "",
    );
    let proxy = Sentinel::start(&cfg).await;
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    assert_eq!(open.load(Ordering::SeqCst), 1, "the connection is pooled");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while open.load(Ordering::SeqCst) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle pooled connection never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_that_hangs_fails_after_its_timeout() {
    let (_socket, _fillers, hole) = tokio::task::spawn_blocking(blackhole).await.unwrap();
    let port = free_port();
    let cfg = config(
        port,
        &[hole],
        "health-check { type \"tcp\"; interval-secs 1; timeout-secs 1; unhealthy-threshold 1; }",
        "",
    );
    let proxy = Sentinel::start(&cfg).await;
    // The check's connect never completes; only its timeout can fail it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let v = proxy.admin_json("/admin/upstreams/app/health").await;
        if v["targets"][0]["healthy"] == false {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a hanging check never failed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(proxy);
}
