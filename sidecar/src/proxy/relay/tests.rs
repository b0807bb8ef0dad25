use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A connected pair of loopback sockets.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    (a.unwrap(), b.unwrap().0)
}

/// Deterministic payload that does not repeat at page size, so a misordered or dropped
/// chunk shows up as a mismatch.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

enum Force {
    /// What the tunnel does: splice where possible.
    Auto,
    /// The fallback copy, as used when no pipe can be had.
    Buffered,
}

struct Relayed {
    got: Vec<u8>,
    mode: io::Result<Mode>,
    counted: u64,
    last_ms: u64,
}

/// writer -> [socket pair] -relay-> [socket pair] -> reader; the writer half-closes
/// after the data, so the reader sees EOF only if the relay passed it on.
async fn relay_through(data: Vec<u8>, force: Force) -> Relayed {
    let (mut writer, a_near) = pair().await;
    let (b_near, mut reader) = pair().await;
    let (from, _a_w) = a_near.into_split();
    let (_b_r, mut to) = b_near.into_split();
    let counter = Counter::default();
    let last = AtomicU64::new(0);
    let activity = Activity { bytes: &counter, last: &last, epoch: Instant::now() };
    let relay = async {
        match force {
            Force::Auto => one_way(from, to, activity).await,
            Force::Buffered => {
                buffered(&from, &to, &activity).await?;
                to.shutdown().await?;
                Ok(Mode::Buffered)
            }
        }
    };
    let write = async {
        writer.write_all(&data).await.unwrap();
        writer.shutdown().await.unwrap();
    };
    let read = async {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        got
    };
    let (mode, (), got) = tokio::join!(relay, write, read);
    Relayed { got, mode, counted: counter.get(), last_ms: last.load(Ordering::Relaxed) }
}

#[tokio::test]
async fn splice_moves_every_byte_in_order_counts_them_and_passes_eof_on() {
    let data = payload(8 * 1024 * 1024 + 123);
    let r = relay_through(data.clone(), Force::Auto).await;
    assert_eq!(r.mode.unwrap(), Mode::Splice, "loopback TCP splices on Linux");
    assert!(r.got == data, "relayed {} bytes of {}, or out of order", r.got.len(), data.len());
    assert_eq!(r.counted, data.len() as u64);
}

#[tokio::test]
async fn tls_records_take_the_buffered_copy() {
    // A TLS handshake record first (ClientHello/ServerHello): buffered, byte for byte.
    let mut data = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    data.extend(payload(2 * 1024 * 1024));
    let r = relay_through(data.clone(), Force::Auto).await;
    assert_eq!(r.mode.unwrap(), Mode::Buffered);
    assert!(r.got == data, "relayed {} bytes of {}, or out of order", r.got.len(), data.len());
    assert_eq!(r.counted, data.len() as u64);
    // Anything else (plain HTTP here) is spliced.
    let r = relay_through(b"GET / HTTP/1.1\r\n\r\n".to_vec(), Force::Auto).await;
    assert_eq!(r.mode.unwrap(), Mode::Splice);
}

#[tokio::test]
async fn buffered_fallback_moves_every_byte_in_order_and_counts_them() {
    let data = payload(3 * 1024 * 1024 + 7);
    let r = relay_through(data.clone(), Force::Buffered).await;
    assert_eq!(r.mode.unwrap(), Mode::Buffered);
    assert!(r.got == data, "relayed {} bytes of {}, or out of order", r.got.len(), data.len());
    assert_eq!(r.counted, data.len() as u64);
}

#[tokio::test]
async fn an_empty_stream_is_just_a_passed_on_eof() {
    let r = relay_through(Vec::new(), Force::Auto).await;
    r.mode.unwrap();
    assert!(r.got.is_empty());
    assert_eq!(r.counted, 0);
    assert_eq!(r.last_ms, 0, "no activity recorded");
}

#[cfg(target_os = "linux")]
#[test]
fn a_pipe_grows_to_the_bulk_size_or_keeps_its_own_when_refused() {
    let mut pipe = splice::Pipe::new().unwrap();
    let before = pipe.capacity();
    assert!(before >= 4096, "a pipe holds at least a page, got {before}");
    pipe.grow(splice::BULK_PIPE);
    let after = pipe.capacity();
    // Refused (per-user pipe budget, a lower pipe-max-size): the old size stays.
    assert!(after == splice::BULK_PIPE || after == before, "{before} -> {after}");
}
