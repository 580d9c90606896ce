//! A broker logging in as a NATS user with narrow permissions, as compose and Kubernetes
//! run it: its own nats-server (the stack's has no users), one user allowed its own stream
//! API, its own subject and its own inbox only.
#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, process::Stdio, time::Duration};

use super::*;

/// The nats-server binary `scripts/stack` uses (on PATH, or where Debian's package puts it).
fn nats_server() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nats-server"));
    on_path
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("nats-server not found: run the tests through scripts/test, which installs it")
        })
}

/// A child process killed when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A nats-server with one user `svc` (password `p@ss/w0rd`) that may use JetStream for the
/// streams of `config` and publish `kind` only, and subscribe to `inbox` only.
async fn server_with_one_user(
    config: &EventsConfig,
    kind: &str,
    inbox: &str,
) -> (Server, u16, PathBuf) {
    let dir = std::env::temp_dir().join(format!("nats-login-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = crate::net::free_loopback_addr().unwrap().port();
    let (s, p) = (&config.stream, config.parked_stream());
    let conf = format!(
        r#"listen: 127.0.0.1:{port}
jetstream {{ store_dir: "{store}" }}
authorization {{
  users: [
    {{
      user: svc
      password: "p@ss/w0rd"
      permissions: {{
        publish: {{ allow: ["$JS.API.STREAM.INFO.{s}", "$JS.API.STREAM.CREATE.{s}", "$JS.API.STREAM.INFO.{p}", "$JS.API.STREAM.CREATE.{p}", "{subject}"] }}
        subscribe: {{ allow: ["{inbox}.>"] }}
      }}
    }}
  ]
}}
"#,
        store = dir.join("js").display(),
        subject = config.subject(kind),
    );
    let file = dir.join("nats.conf");
    std::fs::write(&file, conf).unwrap();
    let child = Server(
        std::process::Command::new(nats_server())
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (child, port, dir);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nats-server did not start on port {port}");
}

#[tokio::test]
async fn a_service_logs_in_with_its_urls_user_and_gets_its_replies_on_its_own_inbox() {
    let name = format!("l{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let probe = EventsConfig::isolated("nats://127.0.0.1:4222", &name);
    let (server, port, dir) = server_with_one_user(&probe, "stock.reserved", "_INBOX_svc").await;
    let config =
        EventsConfig::isolated(format!("nats://svc:p%40ss%2Fw0rd@127.0.0.1:{port}"), &name);
    assert_eq!(config.inbox_prefix(), "_INBOX_svc");

    // Logged in, it creates its streams and publishes its event: every JetStream answer
    // arrives on its own inbox, the only subjects it may subscribe to.
    let broker = Broker::connect(config, "login-test").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), broker.ensure_streams())
        .await
        .expect("JetStream answered within 10 s")
        .unwrap();
    let event = Envelope::new("stock.reserved", "k-1", serde_json::json!({"k": 1})).unwrap();
    let published = tokio::time::timeout(Duration::from_secs(10), broker.publish(&event))
        .await
        .expect("the publish acknowledgement arrived within 10 s")
        .unwrap();
    assert!(!published.duplicate);
    assert_eq!(broker.stored_events().await.unwrap(), 1);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
