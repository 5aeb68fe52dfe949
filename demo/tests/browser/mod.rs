//! A headless Chromium driven over the DevTools protocol, for tests that look at a page
//! the way a user's browser renders it.
//!
//! Why not `chromium --dump-dom`: under `--virtual-time-budget` Chromium stops its
//! virtual clock while any fetch is pending, and a page driven by blocking queries always
//! has one open, so it never settles; without the budget the DOM is dumped at the load
//! event, before any data arrived. Driving the browser instead lets a test wait for what
//! it expects, watch the page change live, reload it, and take a screenshot.
//!
//! The protocol is JSON over a WebSocket ([`websocket`]). The handful of frames and
//! fields a test needs are written out here rather than adding a WebSocket and JSON stack
//! to the workspace for one test.

mod websocket;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mesh_test_support::blocking;
use rustix::process::{Signal, kill_process};
use websocket::{Socket, read_head};

/// Deadline of one protocol command.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A running headless Chromium with one page.
pub struct Browser {
    child: Child,
    socket: Socket,
    next_id: u64,
    /// Its own profile, so runs never share state or a lock.
    _profile: tempfile::TempDir,
}

// === impl Browser ===

impl Browser {
    /// Starts Chromium (`$CHROMIUM`, else `chromium`) with a `width`×`height` window and
    /// attaches to its page.
    pub fn launch(width: u32, height: u32) -> Browser {
        let program = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(&program)
            .args([
                "--headless",
                // Root in a container has no user namespace for the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} ({e}): apt-get install chromium, or set CHROMIUM")
            });
        let port = devtools_port(profile.path());
        let socket = Socket::connect(port, &page_path(port));
        let mut browser = Browser {
            child,
            socket,
            next_id: 0,
            _profile: profile,
        };
        // The window size includes space for browser chrome; pin the page's own.
        browser.command(
            "Emulation.setDeviceMetricsOverride",
            &format!(
                r#"{{"width":{width},"height":{height},"deviceScaleFactor":1,"mobile":false}}"#
            ),
        );
        browser
    }

    pub fn navigate(&mut self, url: &str) {
        self.command(
            "Page.navigate",
            &format!(r#"{{"url":{}}}"#, json_string(url)),
        );
    }

    pub fn reload(&mut self) {
        self.command("Page.reload", r#"{"ignoreCache":true}"#);
    }

    /// Evaluates `expression` in the page; its value as a string (exceptions included,
    /// as `error: …`), so tests compare plain text.
    pub fn eval(&mut self, expression: &str) -> String {
        let wrapped = format!(
            "(() => {{ try {{ return String({expression}); }} catch (e) {{ return 'error: ' + e; }} }})()"
        );
        let params = format!(
            r#"{{"expression":{},"returnByValue":true}}"#,
            json_string(&wrapped)
        );
        let answer = self.command("Runtime.evaluate", &params);
        string_field(&answer, "value").unwrap_or_else(|| panic!("no value in {answer}"))
    }

    /// Returns once the page has drawn `frames` more frames (each after its rendering),
    /// so what a test changed has been laid out and painted.
    pub fn wait_frames(&mut self, frames: u32) {
        let expression = format!(
            "(async () => {{ for (let i = 0; i < {frames}; i++) \
               await new Promise((drawn) => requestAnimationFrame(() => setTimeout(drawn, 0))); }})()"
        );
        let params = format!(
            r#"{{"expression":{},"awaitPromise":true}}"#,
            json_string(&expression)
        );
        self.command("Runtime.evaluate", &params);
    }

    /// Polls `condition` (a JavaScript expression) until it is true; `Err` with the
    /// page's text after `timeout`.
    pub fn wait_for(&mut self, timeout: Duration, condition: &str) -> Result<(), String> {
        // Each look is a task on the page's main thread, which some tests bound: a few a
        // second.
        let every = Duration::from_millis(250);
        let check = format!("Boolean({condition})");
        match blocking::within_every(timeout, every, || {
            (self.eval(&check) == "true").then_some(())
        }) {
            Some(()) => Ok(()),
            None => Err(self.eval("document.body ? document.body.innerText : '(no body)'")),
        }
    }

    /// Writes a PNG of the window to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let answer = self.command("Page.captureScreenshot", r#"{"format":"png"}"#);
        let data = string_field(&answer, "data").expect("a screenshot");
        std::fs::write(path, base64_decode(&data)).unwrap();
    }

    /// Sends one command and returns its answer's message, skipping the events the
    /// browser sends meanwhile.
    fn command(&mut self, method: &str, params: &str) -> String {
        self.next_id += 1;
        let id = self.next_id;
        self.socket.send(&format!(
            r#"{{"id":{id},"method":"{method}","params":{params}}}"#
        ));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "{method}: no answer");
            let message = self.socket.receive();
            if !message.starts_with(&format!(r#"{{"id":{id},"#)) {
                continue;
            }
            assert!(
                !message.contains(r#""error":{"#) || message.contains(r#""result":"#),
                "{method} failed: {message}"
            );
            return message;
        }
    }
}

impl Drop for Browser {
    /// SIGTERM lets Chromium take its helper processes down with it.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id())
            && let Some(pid) = rustix::process::Pid::from_raw(pid)
        {
            let _ = kill_process(pid, Signal::TERM);
        }
        let exited = blocking::within(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        if exited.is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The DevTools port Chromium chose, from the file it writes into its profile.
fn devtools_port(profile: &Path) -> u16 {
    let file = profile.join("DevToolsActivePort");
    let what = format!("Chromium to write {}", file.display());
    blocking::eventually_some(Duration::from_secs(30), &what, || {
        let text = std::fs::read_to_string(&file).ok()?;
        text.lines().next()?.trim().parse().ok()
    })
}

/// The WebSocket path of the browser's page, from its target list.
fn page_path(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(COMMAND_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .unwrap();
    // The DevTools server keeps the connection open: read just what Content-Length says.
    let head = read_head(&mut stream);
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    let text = String::from_utf8(body).unwrap();
    let page = text
        .split('}')
        .find(|target| target.contains(r#""type": "page""#))
        .unwrap_or_else(|| panic!("no page among the targets: {text}"));
    let url = string_field(page, "webSocketDebuggerUrl").expect("a debugger URL");
    let prefix = format!("ws://127.0.0.1:{port}");
    url.strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("unexpected debugger URL {url}"))
        .to_owned()
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The first string value of `"name"` in a JSON text, unescaped.
fn string_field(json: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\"");
    let after_key = &json[json.find(&key)? + key.len()..];
    let value = after_key.trim_start().strip_prefix(':')?.trim_start();
    let mut chars = value.strip_prefix('"')?.chars();
    let mut out = String::new();
    let mut pending_high: Option<u32> = None;
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let code = u32::from_str_radix(&chars.by_ref().take(4).collect::<String>(), 16)
                        .ok()?;
                    match (pending_high.take(), code) {
                        (None, 0xD800..=0xDBFF) => pending_high = Some(code),
                        (Some(high), 0xDC00..=0xDFFF) => out.push(char::from_u32(
                            0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00),
                        )?),
                        (_, code) => out.push(char::from_u32(code).unwrap_or('\u{FFFD}')),
                    }
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// Standard base64 (with padding), as the screenshot arrives.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &d)| acc | u32::from(d) << (18 - 6 * i));
        out.extend(&bits.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_round_trip() {
        let text = "a \"quoted\" \\ line\nand \u{1F600}";
        let json = format!(r#"{{"value":{}}}"#, json_string(text));
        assert_eq!(string_field(&json, "value").unwrap(), text);
        assert_eq!(
            string_field(r#"{"value":"\u003Cp\u003E \ud83d\ude00"}"#, "value").unwrap(),
            "<p> \u{1F600}"
        );
    }

    #[test]
    fn base64_decodes_every_padding() {
        assert_eq!(base64_decode("TWFu"), b"Man");
        assert_eq!(base64_decode("TWE="), b"Ma");
        assert_eq!(base64_decode("TQ=="), b"M");
    }
}
