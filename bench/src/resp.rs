//! A minimal RESP client for the benchmark's own load: commands pipelined as given,
//! replies read one at a time (simple strings, errors, integers and bulk strings).

use std::net::SocketAddr;

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A RESP command (an array of bulk strings).
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Largest bulk reply read (`INFO replication` is a few hundred bytes).
const MAX_BULK: usize = 1 << 20;

/// The first complete reply in `buf` and the bytes it takes, `None` while incomplete: a
/// simple string, error or integer as its line (`+OK`, `-ERR …`, `:2`), a bulk string as
/// its content. (Arrays are not needed here.)
fn parse_reply(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[..end];
    if let Some(len) = line.strip_prefix(b"$") {
        let len: i64 = std::str::from_utf8(len)?.parse()?;
        if let Ok(len) = usize::try_from(len) {
            ensure!(len <= MAX_BULK, "a bulk reply of {len} bytes");
            let start = end + 2;
            if buf.len() < start + len + 2 {
                return Ok(None);
            }
            return Ok(Some((buf[start..start + len].to_vec(), start + len + 2)));
        }
    }
    Ok(Some((line.to_vec(), end + 2)))
}

/// One RESP connection, commands pipelined as given, replies read one at a time.
pub struct Resp {
    s: TcpStream,
    buf: Vec<u8>,
    /// An I/O error happened: the replies may be out of step.
    pub broken: bool,
}

impl Resp {
    pub async fn connect(addr: SocketAddr) -> Result<Resp> {
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        Ok(Resp {
            s,
            buf: Vec::new(),
            broken: false,
        })
    }

    pub async fn send(&mut self, req: &[u8]) -> Result<()> {
        self.broken = true;
        self.s.write_all(req).await?;
        self.broken = false;
        Ok(())
    }

    pub async fn reply(&mut self) -> Result<Vec<u8>> {
        self.broken = true;
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf)? {
                self.buf.drain(..used);
                self.broken = false;
                return Ok(reply);
            }
            let mut chunk = [0u8; 4096];
            let k = self.s.read(&mut chunk).await?;
            ensure!(k > 0, "the store closed the connection");
            self.buf.extend_from_slice(&chunk[..k]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_split_whole() {
        let two = b"+OK\r\n:2\r\n";
        assert_eq!(parse_reply(two).unwrap(), Some((b"+OK".to_vec(), 5)));
        assert_eq!(parse_reply(&two[5..]).unwrap(), Some((b":2".to_vec(), 4)));
        assert_eq!(parse_reply(b"+O").unwrap(), None);
        assert_eq!(parse_reply(b"$5\r\nhel").unwrap(), None);
        assert_eq!(
            parse_reply(b"$5\r\nhello\r\n+OK\r\n").unwrap(),
            Some((b"hello".to_vec(), 11))
        );
        assert_eq!(parse_reply(b"$-1\r\n").unwrap(), Some((b"$-1".to_vec(), 5)));
        assert!(parse_reply(b"$x\r\n").is_err());
        assert!(parse_reply(b"$99999999\r\n").is_err());
        assert_eq!(
            parse_reply(b"-ERR no\r\n").unwrap(),
            Some((b"-ERR no".to_vec(), 9))
        );
    }
}
