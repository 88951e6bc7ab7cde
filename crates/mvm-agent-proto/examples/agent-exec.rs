//! Debugging aid: connect to an agent stream on a Unix socket (a QEMU
//! chardev socket, a test agent, or a supervisor's mux socket), handshake,
//! print the agent's info and run one command.
//!
//! `cargo run -p mvm-agent-proto --features tokio --example agent-exec -- SOCKET CMD [ARG...]`

use std::io::Write;
use std::time::{Duration, Instant};

use mvm_agent_proto::ExecRequest;
use mvm_agent_proto::client::{AgentClient, ExecEvent};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((socket, argv)) = args.split_first() else {
        eprintln!("usage: agent-exec SOCKET CMD [ARG...]");
        std::process::exit(2);
    };
    let t = Instant::now();
    let c =
        match AgentClient::connect_unix(socket.as_ref(), Instant::now() + Duration::from_secs(60))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("connect: {e:?}");
                std::process::exit(1);
            }
        };
    eprintln!("handshake after {:?}: {:?}", t.elapsed(), c.negotiated());
    match c.info().await {
        Ok(i) => eprintln!("info: {i:?}"),
        Err(e) => eprintln!("info: {e:?}"),
    }
    if argv.is_empty() {
        return;
    }
    let mut s = match c
        .exec(ExecRequest {
            argv: argv.to_vec(),
            ..Default::default()
        })
        .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("exec: {e:?}");
            std::process::exit(1);
        }
    };
    loop {
        match s.next_event().await {
            Ok(Some(ExecEvent::Stdout(b))) => {
                let _ = std::io::stdout().write_all(&b);
            }
            Ok(Some(ExecEvent::Stderr(b))) => {
                let _ = std::io::stderr().write_all(&b);
            }
            Ok(Some(ExecEvent::Exit(st))) => eprintln!("exit: {st:?}"),
            Ok(None) => break,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    if std::env::var_os("AGENT_EXEC_SHUTDOWN").is_some() {
        eprintln!("shutdown: {:?}", c.shutdown().await);
    }
}
