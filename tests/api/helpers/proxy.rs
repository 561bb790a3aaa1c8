//! A TCP relay between a worker and the test broker that a test can freeze
//! (bytes stop moving both ways, connections stay open: a node that hangs,
//! a partition) and sever (every relayed connection drops at once).

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// What the relayed connections do: forward (or hold, `frozen`); those
/// accepted before the last sever (an older `generation`) close.
#[derive(Clone, Copy, PartialEq, Eq)]
struct State {
    frozen: bool,
    generation: u64,
}

pub struct Proxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Relays to the broker of `url` (an `amqp://` URL).
    pub async fn start(url: &str) -> Self {
        let upstream = host_port(url).to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("proxy address");
        let (state, _) = watch::channel(State {
            frozen: false,
            generation: 0,
        });
        let states = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let generation = states.borrow().generation;
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, states.subscribe(), generation));
                tokio::spawn(pipe(sr, cw, states.subscribe(), generation));
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    /// `url` with its host and port replaced by the relay's.
    pub fn url(&self, url: &str) -> String {
        url.replacen(host_port(url), &self.addr.to_string(), 1)
    }

    /// Bytes stop moving; connections stay open.
    pub fn freeze(&self) {
        self.state.send_modify(|s| s.frozen = true);
    }

    /// Bytes move again (on connections made after a sever, too).
    pub fn thaw(&self) {
        self.state.send_modify(|s| s.frozen = false);
    }

    /// Every connection relayed so far closes, with what it held.
    pub fn sever(&self) {
        self.state.send_modify(|s| s.generation += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.sever();
        self.accept.abort();
    }
}

/// The `host:port` of an `amqp://user:pass@host:port/vhost` URL.
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    generation: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = state.wait_for(|s| s.generation != generation) => return,
        };
        // Held while frozen; dropped with the connection on a sever.
        match state
            .wait_for(|s| s.generation != generation || !s.frozen)
            .await
        {
            Ok(s) if s.generation == generation => {}
            _ => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[test]
fn host_port_of_urls() {
    assert_eq!(
        host_port("amqp://guest:guest@127.0.0.1:5672/%2f"),
        "127.0.0.1:5672"
    );
    assert_eq!(host_port("amqp://localhost:5674"), "localhost:5674");
    assert_eq!(host_port("amqp://u:p@h:1/v?heartbeat=5"), "h:1");
}
