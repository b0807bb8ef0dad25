//! A Chrome DevTools Protocol client over `--remote-debugging-pipe`: Chromium reads
//! commands on its fd 3 and writes answers and events on its fd 4, one JSON message per
//! NUL-terminated frame. No port is opened (nothing else in the pod can drive the
//! browser), no websocket is needed, and Chromium exits on its own when the pipe closes,
//! so a runtime that dies cannot leave a browser behind.
//!
//! Sessions are flat (`Target.attachToTarget` with `flatten: true`): a page's commands
//! and events carry its `sessionId` on the same pipe.
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// Largest message kept; a larger one (a page logging a huge string) is skipped whole.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// An event Chromium sent: `method`, the session it belongs to (None: the browser).
#[derive(Debug, Clone)]
pub struct Event {
    pub method: String,
    pub session: Option<String>,
    pub params: Value,
}

pub struct Cdp {
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Pending,
    next_id: AtomicU64,
}

impl Cdp {
    /// Starts the reader task; events arrive on the returned channel, which closes when
    /// Chromium closes its end of the pipe.
    pub fn start(
        to_browser: impl AsyncWrite + Send + Unpin + 'static,
        from_browser: impl AsyncRead + Send + Unpin + 'static,
    ) -> (Arc<Cdp>, mpsc::UnboundedReceiver<Event>) {
        let pending: Pending = Arc::default();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(from_browser, pending.clone(), events_tx));
        let cdp = Cdp { writer: tokio::sync::Mutex::new(Box::new(to_browser)), pending, next_id: AtomicU64::new(1) };
        (Arc::new(cdp), events_rx)
    }

    /// Sends one command and waits for its answer: the `result` object, or the
    /// protocol's error message.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let mut frame = serde_json::to_vec(&msg).expect("a command serializes");
        frame.push(0);
        {
            let mut w = self.writer.lock().await;
            if let Err(e) = async {
                w.write_all(&frame).await?;
                w.flush().await
            }
            .await
            {
                self.pending.lock().expect("pending lock").remove(&id);
                return Err(format!("{method}: cannot write to chromium: {e}"));
            }
        }
        match rx.await {
            Ok(r) => r.map_err(|e| format!("{method}: {e}")),
            Err(_) => Err(format!("{method}: chromium closed the DevTools pipe")),
        }
    }
}

async fn read_loop(from: impl AsyncRead + Unpin, pending: Pending, events: mpsc::UnboundedSender<Event>) {
    let mut reader = BufReader::with_capacity(256 * 1024, from);
    let mut frame = Vec::new();
    let mut oversized = false;
    loop {
        let (done, used) = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => match buf.iter().position(|b| *b == 0) {
                Some(i) => {
                    if !oversized {
                        frame.extend_from_slice(&buf[..i]);
                    }
                    (true, i + 1)
                }
                None => {
                    if !oversized {
                        frame.extend_from_slice(buf);
                    }
                    (false, buf.len())
                }
            },
        };
        reader.consume(used);
        if frame.len() > MAX_MESSAGE {
            frame = Vec::new();
            oversized = true;
        }
        if !done {
            continue;
        }
        if oversized {
            eprintln!("browser-runtime: skipped a DevTools message over {MAX_MESSAGE} bytes");
            oversized = false;
            continue;
        }
        let msg: Value = match serde_json::from_slice(&frame) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("browser-runtime: unreadable DevTools message: {e}");
                frame.clear();
                continue;
            }
        };
        frame.clear();
        dispatch(msg, &pending, &events);
    }
    // Chromium is gone: every waiting call fails (dropping the senders says so).
    pending.lock().expect("pending lock").clear();
}

fn dispatch(mut msg: Value, pending: &Pending, events: &mpsc::UnboundedSender<Event>) {
    if let Some(id) = msg.get("id").and_then(Value::as_u64) {
        let Some(tx) = pending.lock().expect("pending lock").remove(&id) else {
            return;
        };
        let answer = match msg.get_mut("error") {
            Some(err) => {
                Err(err.get("message").and_then(Value::as_str).unwrap_or("unknown protocol error").to_string())
            }
            None => Ok(msg.get_mut("result").map(Value::take).unwrap_or(Value::Null)),
        };
        let _ = tx.send(answer);
        return;
    }
    let Some(method) = msg.get("method").and_then(Value::as_str).map(str::to_string) else {
        return;
    };
    let session = msg.get("sessionId").and_then(Value::as_str).map(str::to_string);
    let params = msg.get_mut("params").map(Value::take).unwrap_or(Value::Null);
    let _ = events.send(Event { method, session, params });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A fake browser on an in-memory pipe: answers one command, sends an event and an
    /// error, all split across writes to exercise the framing.
    #[tokio::test]
    async fn calls_answers_errors_and_events() {
        let (ours, theirs) = tokio::io::duplex(64);
        let (read_half, write_half) = tokio::io::split(ours);
        let (cdp, mut events) = Cdp::start(write_half, read_half);
        let (mut b_read, mut b_write) = tokio::io::split(theirs);
        let browser = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut byte = [0u8; 1];
            while got.iter().filter(|b| **b == 0).count() < 2 {
                b_read.read_exact(&mut byte).await.unwrap();
                got.push(byte[0]);
            }
            let frames: Vec<Value> =
                got.split(|b| *b == 0).filter(|f| !f.is_empty()).map(|f| serde_json::from_slice(f).unwrap()).collect();
            let reply = format!(
                "{}\0{}\0{}\0",
                json!({"method": "Page.loadEventFired", "sessionId": "S1", "params": {"timestamp": 1.5}}),
                json!({"id": frames[0]["id"], "result": {"product": "Chrome/1"}}),
                json!({"id": frames[1]["id"], "error": {"code": -32000, "message": "No target with given id"}}),
            );
            for chunk in reply.as_bytes().chunks(7) {
                b_write.write_all(chunk).await.unwrap();
            }
            frames
        });
        let (a, b) = tokio::join!(
            cdp.call(None, "Browser.getVersion", json!({})),
            cdp.call(Some("S1"), "Target.closeTarget", json!({"targetId": "x"}))
        );
        assert_eq!(a.unwrap()["product"], "Chrome/1");
        assert_eq!(b.unwrap_err(), "Target.closeTarget: No target with given id");
        let frames = browser.await.unwrap();
        assert_eq!(frames[1]["sessionId"], "S1");
        assert!(frames[0].get("sessionId").is_none());
        let ev = events.recv().await.unwrap();
        assert_eq!((ev.method.as_str(), ev.session.as_deref()), ("Page.loadEventFired", Some("S1")));
        assert_eq!(ev.params["timestamp"], 1.5);
    }

    #[tokio::test]
    async fn a_closed_pipe_fails_calls_and_ends_events() {
        let (ours, theirs) = tokio::io::duplex(64);
        let (read_half, write_half) = tokio::io::split(ours);
        let (cdp, mut events) = Cdp::start(write_half, read_half);
        let waiting = tokio::spawn({
            let cdp = cdp.clone();
            async move { cdp.call(None, "Browser.getVersion", json!({})).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(theirs);
        let err = waiting.await.unwrap().unwrap_err();
        assert!(err.contains("closed the DevTools pipe") || err.contains("cannot write"), "{err}");
        assert!(events.recv().await.is_none());
    }
}
