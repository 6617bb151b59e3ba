//! A bare hyper backend for benchmarks and the demo: answers every request
//! with a small fixed body (`/health` answers `ok`).
//!
//! Usage: `sentinel-bench-backend ADDR [NAME] [WORKERS]`.
//! Prints `listening on ADDR` once bound.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".to_string());
    let name = args.next().unwrap_or_else(|| "backend".to_string());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(1);
    let body = Bytes::from(format!("hello from {name}\n"));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            println!("listening on {}", listener.local_addr()?);
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let body = if req.uri().path() == "/health" {
                                Bytes::from_static(b"ok\n")
                            } else {
                                body.clone()
                            };
                            async move {
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .header("content-type", "text/plain")
                                        .body(Full::new(body))
                                        .unwrap_or_default(),
                                )
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
