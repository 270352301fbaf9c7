//! TFTP packets (RFC 1350) with option extensions (RFC 2347): bounded parsing, no panics.

/// Error codes of RFC 1350 and RFC 2347.
pub mod code {
    pub const NOT_DEFINED: u16 = 0;
    pub const FILE_NOT_FOUND: u16 = 1;
    pub const ACCESS_VIOLATION: u16 = 2;
    pub const ILLEGAL_OPERATION: u16 = 4;
    pub const OPTION_REFUSED: u16 = 8;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq {
        filename: String,
        mode: String,
        options: Vec<(String, String)>,
    },
    Wrq {
        filename: String,
    },
    Data {
        block: u16,
        data: &'a [u8],
    },
    Ack {
        block: u16,
    },
    Error {
        code: u16,
        message: String,
    },
    Oack {
        options: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet shorter than 4 bytes")]
    TooShort,
    #[error("unknown opcode {0}")]
    Opcode(u16),
    #[error("request field is not NUL-terminated")]
    Unterminated,
    #[error("request field is not UTF-8")]
    NotUtf8,
    #[error("request carries more than 32 options")]
    TooManyOptions,
}

/// Splits NUL-terminated strings; a trailing unterminated fragment is an error.
fn strings(mut b: &[u8]) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let end = b
            .iter()
            .position(|&c| c == 0)
            .ok_or(ParseError::Unterminated)?;
        out.push(String::from_utf8(b[..end].to_vec()).map_err(|_| ParseError::NotUtf8)?);
        b = &b[end + 1..];
    }
    Ok(out)
}

/// File name, mode and options of a request.
type RequestFields = (String, String, Vec<(String, String)>);

fn request_fields(body: &[u8]) -> Result<RequestFields, ParseError> {
    let mut s = strings(body)?.into_iter();
    let filename = s.next().ok_or(ParseError::Unterminated)?;
    let mode = s.next().ok_or(ParseError::Unterminated)?;
    let rest: Vec<String> = s.collect();
    if rest.len() > 64 {
        return Err(ParseError::TooManyOptions);
    }
    // A dangling option name without a value is ignored, as RFC 2347 servers do.
    let options = rest
        .chunks_exact(2)
        .map(|kv| (kv[0].to_ascii_lowercase(), kv[1].clone()))
        .collect();
    Ok((filename, mode, options))
}

impl<'a> Packet<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Self, ParseError> {
        if b.len() < 2 {
            return Err(ParseError::TooShort);
        }
        let op = u16::from_be_bytes([b[0], b[1]]);
        let body = &b[2..];
        match op {
            1 => {
                let (filename, mode, options) = request_fields(body)?;
                Ok(Packet::Rrq {
                    filename,
                    mode,
                    options,
                })
            }
            2 => {
                let (filename, _, _) = request_fields(body)?;
                Ok(Packet::Wrq { filename })
            }
            3..=5 if body.len() < 2 => Err(ParseError::TooShort),
            3 => Ok(Packet::Data {
                block: u16::from_be_bytes([body[0], body[1]]),
                data: &body[2..],
            }),
            4 => Ok(Packet::Ack {
                block: u16::from_be_bytes([body[0], body[1]]),
            }),
            5 => {
                let text = &body[2..];
                let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
                Ok(Packet::Error {
                    code: u16::from_be_bytes([body[0], body[1]]),
                    message: String::from_utf8_lossy(&text[..end]).into_owned(),
                })
            }
            6 => {
                let s = strings(body)?;
                Ok(Packet::Oack {
                    options: s
                        .chunks_exact(2)
                        .map(|kv| (kv[0].clone(), kv[1].clone()))
                        .collect(),
                })
            }
            n => Err(ParseError::Opcode(n)),
        }
    }
}

pub fn error(code: u16, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + message.len());
    p.extend_from_slice(&5u16.to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    p.push(0);
    p
}

pub fn oack(options: &[(String, String)]) -> Vec<u8> {
    let mut p = vec![0, 6];
    for (k, v) in options {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

pub fn data(block: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + payload.len());
    p.extend_from_slice(&3u16.to_be_bytes());
    p.extend_from_slice(&block.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

pub fn ack(block: u16) -> Vec<u8> {
    let mut p = vec![0, 4];
    p.extend_from_slice(&block.to_be_bytes());
    p
}

/// A read request as a client sends it.
pub fn rrq(filename: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    for s in [filename, mode]
        .into_iter()
        .chain(options.iter().flat_map(|(k, v)| [*k, *v]))
    {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rrq_with_options_case_insensitively() {
        let p = rrq(
            "ipxe.efi",
            "octet",
            &[("TSIZE", "0"), ("blksize", "1468"), ("windowsize", "4")],
        );
        match Packet::parse(&p).unwrap() {
            Packet::Rrq {
                filename,
                mode,
                options,
            } => {
                assert_eq!(filename, "ipxe.efi");
                assert_eq!(mode, "octet");
                assert_eq!(options[0], ("tsize".into(), "0".into()));
                assert_eq!(options.len(), 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_bad_packets() {
        assert_eq!(Packet::parse(&[0]), Err(ParseError::TooShort));
        assert_eq!(Packet::parse(&[0, 9, 0, 0]), Err(ParseError::Opcode(9)));
        assert_eq!(Packet::parse(&[0, 1, b'a']), Err(ParseError::Unterminated));
        assert_eq!(
            Packet::parse(&[0, 1, b'a', 0]),
            Err(ParseError::Unterminated)
        );
        assert_eq!(Packet::parse(&[0, 4, 1]), Err(ParseError::TooShort));
        assert_eq!(
            Packet::parse(&[0, 1, 0xff, 0, b'o', 0]),
            Err(ParseError::NotUtf8)
        );
    }

    #[test]
    fn error_packet_round_trips() {
        let e = error(8, "size probe");
        assert_eq!(
            Packet::parse(&e).unwrap(),
            Packet::Error {
                code: 8,
                message: "size probe".into()
            }
        );
        assert_eq!(
            Packet::parse(&[0, 5, 0, 8]).unwrap(),
            Packet::Error {
                code: 8,
                message: String::new()
            }
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
            let _ = Packet::parse(&data);
        }
    }
}
