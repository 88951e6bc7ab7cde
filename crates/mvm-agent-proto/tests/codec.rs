//! Property tests of the frame codec.

use bytes::Bytes;
use mvm_agent_proto::*;
use proptest::prelude::*;

fn s() -> impl Strategy<Value = String> {
    "[ -~é😀]{0,12}"
}

fn data() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..2048).prop_map(Bytes::from)
}

fn exec_req() -> impl Strategy<Value = ExecRequest> {
    (
        prop::collection::vec(s(), 0..4),
        prop::collection::vec((s(), s()), 0..3),
        prop::option::of(s()),
        any::<bool>(),
        prop::option::of(any::<u64>()),
        prop::option::of(win_size()),
    )
        .prop_map(|(argv, env, cwd, stdin, timeout_ms, tty)| ExecRequest {
            argv,
            env,
            cwd,
            stdin,
            timeout_ms,
            tty,
            user: None,
        })
}

fn win_size() -> impl Strategy<Value = WinSize> {
    (any::<u16>(), any::<u16>()).prop_map(|(rows, cols)| WinSize { rows, cols })
}

fn message() -> impl Strategy<Value = Message> {
    let role = prop_oneof![Just(Role::Host), Just(Role::Agent)];
    let kind = prop_oneof![
        Just(ErrorKind::NotFound),
        Just(ErrorKind::PermissionDenied),
        Just(ErrorKind::InvalidRequest),
        Just(ErrorKind::Version),
        Just(ErrorKind::Other)
    ];
    let request = prop_oneof![
        Just(Request::Ping),
        Just(Request::Info),
        Just(Request::Shutdown),
        exec_req().prop_map(Request::Exec),
        (s(), any::<u32>()).prop_map(|(path, mode)| Request::WriteFile { path, mode }),
        s().prop_map(|path| Request::ReadFile { path }),
    ];
    let response = prop_oneof![
        Just(Response::Pong),
        Just(Response::Done),
        (s(), s(), s(), any::<u64>()).prop_map(|(a, h, k, u)| Response::Info(AgentInfo {
            agent_version: a,
            hostname: h,
            kernel_release: k,
            uptime_ms: u
        })),
        (any::<u32>(), any::<u64>())
            .prop_map(|(mode, size)| Response::FileMeta(FileMeta { mode, size })),
    ];
    prop_oneof![
        (any::<u32>(), any::<u32>(), role, s()).prop_map(|(a, b, role, software)| Message::Hello(
            Hello {
                min_version: a,
                max_version: b,
                role,
                software
            }
        )),
        request.prop_map(Message::Request),
        response.prop_map(Message::Response),
        data().prop_map(Message::Stdin),
        Just(Message::StdinEof),
        data().prop_map(Message::Stdout),
        data().prop_map(Message::Stderr),
        (
            prop::option::of(any::<i32>()),
            prop::option::of(any::<i32>()),
            any::<bool>()
        )
            .prop_map(|(code, signal, timed_out)| Message::Exit(ExitStatus {
                code,
                signal,
                timed_out
            })),
        any::<i32>().prop_map(Message::Signal),
        (kind, s()).prop_map(|(k, m)| Message::Error(ErrorMsg::new(k, m))),
        any::<u32>().prop_map(Message::Window),
        data().prop_map(Message::Data),
        Just(Message::DataEnd),
        Just(Message::Cancel),
        win_size().prop_map(Message::Resize),
    ]
}

fn frames() -> impl Strategy<Value = Vec<Frame>> {
    prop::collection::vec(
        (any::<u32>(), message()).prop_map(|(s, m)| Frame::new(s, m)),
        0..12,
    )
}

fn decode_all(chunks: &[&[u8]]) -> Vec<Frame> {
    let mut d = FrameDecoder::new();
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c);
        while let Some(f) = d.next_frame() {
            out.push(f.expect("valid stream"));
        }
    }
    assert_eq!(d.buffered(), 0);
    out
}

proptest! {
    #[test]
    fn round_trip(fs in frames()) {
        let mut wire = Vec::new();
        for f in &fs {
            encode(f, &mut wire).unwrap();
        }
        prop_assert_eq!(decode_all(&[&wire]), fs);
    }

    #[test]
    fn split_anywhere_gives_the_same_frames(fs in frames(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let mut wire = Vec::new();
        for f in &fs {
            encode(f, &mut wire).unwrap();
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&wire[last..p]);
            last = p;
        }
        chunks.push(&wire[last..]);
        prop_assert_eq!(decode_all(&chunks), fs);
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4096), step in 1usize..64) {
        let mut d = FrameDecoder::new();
        for c in bytes.chunks(step) {
            d.feed(c);
            while let Some(r) = d.next_frame() {
                if r.is_err() {
                    break;
                }
            }
        }
    }

    #[test]
    fn mutated_frames_never_panic(fs in frames(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut wire = Vec::new();
        for f in &fs {
            encode(f, &mut wire).unwrap();
        }
        if wire.is_empty() {
            return Ok(());
        }
        for (i, b) in flips {
            let i = i.index(wire.len());
            wire[i] ^= b;
        }
        let mut d = FrameDecoder::new();
        d.feed(&wire);
        while let Some(r) = d.next_frame() {
            if r.is_err() {
                break;
            }
        }
    }
}

#[test]
fn oversize_length_rejected_before_body_arrives() {
    let mut d = FrameDecoder::new();
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&u32::MAX.to_le_bytes());
    d.feed(&hdr);
    assert!(
        matches!(d.next_frame(), Some(Err(ProtoError::FrameTooLarge { len })) if len == u64::from(u32::MAX))
    );
}

#[test]
fn data_payload_over_64k_rejected() {
    let mut wire = Vec::new();
    let len = 5 + DATA_CHUNK_MAX as u32 + 1;
    wire.extend_from_slice(&len.to_le_bytes());
    wire.extend_from_slice(&1u32.to_le_bytes());
    wire.push(6);
    wire.resize(4 + len as usize, 0);
    let mut d = FrameDecoder::new();
    d.feed(&wire);
    match d.next_frame() {
        Some(Err(ProtoError::Undecodable {
            kind: 6, source, ..
        })) => {
            assert!(matches!(*source, ProtoError::DataTooLarge { kind: 6, .. }))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_version_1_exec_request_still_decodes_and_means_no_terminal() {
    // Exactly what a version-1 host sends: no `tty` field.
    let v1 = br#"{"Exec":{"argv":["sh"],"env":[],"cwd":null,"stdin":true,"timeout_ms":null}}"#;
    let mut wire = Vec::new();
    wire.extend_from_slice(&(5 + v1.len() as u32).to_le_bytes());
    wire.extend_from_slice(&1u32.to_le_bytes());
    wire.push(2);
    wire.extend_from_slice(v1);
    let mut d = FrameDecoder::new();
    d.feed(&wire);
    match d.next_frame() {
        Some(Ok(Frame {
            message: Message::Request(Request::Exec(r)),
            ..
        })) => {
            assert_eq!(r.tty, None);
            assert!(r.stdin);
        }
        other => panic!("{other:?}"),
    }
    // And a request without a terminal is encoded without the field, so a
    // version-1 agent sees exactly what it always saw.
    let json = serde_json::to_string(&Request::Exec(ExecRequest::default())).unwrap();
    assert!(!json.contains("tty"), "{json}");
}

#[test]
fn resize_with_a_wrong_payload_size_is_undecodable_not_fatal() {
    let mut d = FrameDecoder::new();
    d.feed(&[8, 0, 0, 0, 9, 0, 0, 0, 15, 1, 0, 2]);
    d.feed(&[5, 0, 0, 0, 9, 0, 0, 0, 14]);
    match d.next_frame() {
        Some(Err(
            e @ ProtoError::Undecodable {
                session: 9,
                kind: 15,
                ..
            },
        )) => {
            assert!(!e.is_fatal())
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(d.next_frame(), Some(Ok(f)) if f == Frame::new(9, Message::Cancel)));
}

#[test]
fn unknown_kind_and_bad_json_are_errors() {
    for (kind, payload) in [(200u8, &b""[..]), (2, b"{not json"), (9, b"\x01\x02")] {
        let mut wire = Vec::new();
        wire.extend_from_slice(&(5 + payload.len() as u32).to_le_bytes());
        wire.extend_from_slice(&3u32.to_le_bytes());
        wire.push(kind);
        wire.extend_from_slice(payload);
        let mut d = FrameDecoder::new();
        d.feed(&wire);
        assert!(matches!(d.next_frame(), Some(Err(_))), "kind {kind}");
    }
}
