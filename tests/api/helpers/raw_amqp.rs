//! A bare AMQP 0-9-1 publisher that writes a message's header table as the
//! bytes it is given, as any client on the network could. The tests' own
//! client (lapin) encodes values by recursion and could not write a header
//! nested 20,000 deep; an attacker's client need not be so polite.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const METHOD: u8 = 1;
const HEADER: u8 = 2;
const BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;

/// A field table nested `depth` arrays deep under the header `name`, as
/// the bytes of a `headers` property (built outside in, without recursion).
pub fn deep_header_table(name: &str, depth: usize) -> Vec<u8> {
    let mut value = Vec::with_capacity(5 * depth + 1);
    for k in 0..depth {
        let inner = u32::try_from(5 * (depth - k - 1) + 1).expect("fits");
        value.push(b'A');
        value.extend_from_slice(&inner.to_be_bytes());
    }
    value.push(b'V');
    let mut entries = vec![u8::try_from(name.len()).expect("short name")];
    entries.extend_from_slice(name.as_bytes());
    entries.extend_from_slice(&value);
    let mut table = u32::try_from(entries.len())
        .expect("fits")
        .to_be_bytes()
        .to_vec();
    table.extend_from_slice(&entries);
    table
}

/// Publishes `body` to `exchange` with `routing_key`, persistent, with the
/// raw `headers` table, and waits for the broker's confirm.
pub async fn publish_with_raw_headers(
    exchange: &str,
    routing_key: &str,
    headers: &[u8],
    body: &[u8],
) {
    let uri: lapin::uri::AMQPUri = amqp_url().parse().expect("AMQP_URL parses");
    let addr = format!("{}:{}", uri.authority.host, uri.authority.port);
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {addr} ({e})"));
    s.write_all(b"AMQP\x00\x00\x09\x01").await.expect("write");
    expect_method(&mut s, 10, 10).await; // connection.start
    let mut a = Vec::new();
    a.extend_from_slice(&0u32.to_be_bytes()); // client properties: empty
    short_str(&mut a, "PLAIN");
    let creds = format!(
        "\0{}\0{}",
        uri.authority.userinfo.username, uri.authority.userinfo.password
    );
    long_str(&mut a, creds.as_bytes());
    short_str(&mut a, "en_US");
    method(&mut s, 0, 10, 11, &a).await; // start-ok
    let tune = expect_method(&mut s, 10, 30).await;
    let mut a = tune[..2].to_vec(); // channel-max as offered
    a.extend_from_slice(&131_072u32.to_be_bytes()); // frame-max
    a.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
    method(&mut s, 0, 10, 31, &a).await; // tune-ok
    let mut a = Vec::new();
    short_str(&mut a, &uri.vhost);
    short_str(&mut a, "");
    a.push(0);
    method(&mut s, 0, 10, 40, &a).await; // connection.open
    expect_method(&mut s, 10, 41).await;
    method(&mut s, 1, 20, 10, &[0]).await; // channel.open
    expect_method(&mut s, 20, 11).await;
    method(&mut s, 1, 85, 10, &[0]).await; // confirm.select
    expect_method(&mut s, 85, 11).await;
    let mut a = 0u16.to_be_bytes().to_vec();
    short_str(&mut a, exchange);
    short_str(&mut a, routing_key);
    a.push(0b01); // mandatory
    method(&mut s, 1, 60, 40, &a).await; // basic.publish
    let mut h = Vec::new();
    h.extend_from_slice(&60u16.to_be_bytes());
    h.extend_from_slice(&0u16.to_be_bytes());
    h.extend_from_slice(&u64::try_from(body.len()).expect("fits").to_be_bytes());
    // content-type, headers, delivery-mode
    h.extend_from_slice(&0b1011_0000_0000_0000u16.to_be_bytes());
    short_str(&mut h, "application/json");
    h.extend_from_slice(headers);
    h.push(2);
    frame(&mut s, HEADER, 1, &h).await;
    frame(&mut s, BODY, 1, body).await;
    // basic.ack (60.80); a basic.return (60.50) would come first.
    let (class, id, _) = read_method(&mut s).await;
    assert_eq!(
        (class, id),
        (60, 80),
        "the broker did not confirm the message"
    );
    let mut a = 200u16.to_be_bytes().to_vec();
    short_str(&mut a, "done");
    a.extend_from_slice(&[0, 0, 0, 0]);
    method(&mut s, 0, 10, 50, &a).await; // connection.close
    expect_method(&mut s, 10, 51).await;
}

fn short_str(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).expect("short string"));
    out.extend_from_slice(s.as_bytes());
}

fn long_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).expect("fits").to_be_bytes());
    out.extend_from_slice(s);
}

async fn frame(s: &mut tokio::net::TcpStream, kind: u8, channel: u16, payload: &[u8]) {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&u32::try_from(payload.len()).expect("fits").to_be_bytes());
    f.extend_from_slice(payload);
    f.push(FRAME_END);
    s.write_all(&f).await.expect("write a frame");
}

async fn method(s: &mut tokio::net::TcpStream, channel: u16, class: u16, id: u16, args: &[u8]) {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(args);
    frame(s, METHOD, channel, &p).await;
}

/// The next method frame: class, method and arguments.
async fn read_method(s: &mut tokio::net::TcpStream) -> (u16, u16, Vec<u8>) {
    let read = async {
        let mut head = [0u8; 7];
        s.read_exact(&mut head).await.expect("read a frame");
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0; size + 1];
        s.read_exact(&mut payload).await.expect("read a frame");
        assert_eq!(head[0], METHOD, "expected a method frame");
        let class = u16::from_be_bytes([payload[0], payload[1]]);
        let id = u16::from_be_bytes([payload[2], payload[3]]);
        (class, id, payload[4..size].to_vec())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the broker answers within 10 s")
}

async fn expect_method(s: &mut tokio::net::TcpStream, class: u16, id: u16) -> Vec<u8> {
    let (c, i, args) = read_method(s).await;
    assert_eq!((c, i), (class, id), "unexpected method from the broker");
    args
}
